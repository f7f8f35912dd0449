"""magtkd_stream: real-time multimodal emotion recognition in conversations (MAGTKD).

The library imports neither Ray, websockets, faster-whisper nor OpenCV at module
top: those load lazily where they are used, so training and tests stay light.
"""

__version__ = "0.1.0"
