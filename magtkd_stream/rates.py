"""The one audio sample rate the recognizer runs at.

Whisper, the VAD and every encoder take 16 kHz mono; clients may send other
rates (protocol.SAMPLE_RATES), which the gateway resamples to this one.
"""

SAMPLE_RATE = 16000  # Hz
