"""The fixed names every part of the recognizer shares, defined once.

SAMPLE_RATE: Whisper, the VAD and every encoder take 16 kHz mono; clients may
send other rates (protocol.SAMPLE_RATES), which the gateway resamples to it.
MODALITIES: the three inputs, in the order heads, vectors and events list them.
UNTRAINED_MODEL_ID: the model id events carry when fusion runs without a checkpoint.
"""

SAMPLE_RATE = 16000  # Hz
MODALITIES: tuple[str, ...] = ("text", "audio", "video")
UNTRAINED_MODEL_ID = "untrained"
