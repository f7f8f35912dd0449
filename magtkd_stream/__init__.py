"""magtkd_stream: real-time multimodal emotion recognition in conversations (MAGTKD).

The library imports neither Ray, websockets, faster-whisper nor OpenCV at module
top: those load lazily where they are used, so training and tests stay light.
"""

__version__ = "0.1.0"

_API = ("load", "RecognizerHandle", "LiveSession")
__all__ = ["__version__", *_API]


def __getattr__(name: str):  # the API on first use, so `import magtkd_stream` stays cheap
    if name in _API:
        from magtkd_stream import api

        return getattr(api, name)
    raise AttributeError(f"module 'magtkd_stream' has no attribute {name!r}")
