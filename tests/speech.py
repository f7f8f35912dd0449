"""Real synthesized speech for tests: espeak-ng output resampled to 16 kHz mono float32.

A plain module (not a fixture) so any test can import it; tests skip when
espeak-ng is not installed.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        channels, rate = w.getnchannels(), w.getframerate()
    return raw.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return x
    from scipy.signal import resample_poly

    g = np.gcd(src, dst)
    return resample_poly(x, dst // g, src // g).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _synth(text: str, voice: str, rate: int) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-w", str(out), text], check=True, capture_output=True)
        audio, src = _read_wav(out)
    audio = np.clip(_resample(audio, src, rate), -1.0, 1.0)
    audio.setflags(write=False)
    return audio


def synth_speech(text: str, voice: str = "en", rate: int = 16000) -> np.ndarray:
    """`text` spoken by espeak-ng as mono float32 in [-1, 1] at `rate` Hz (a fresh copy)."""
    return _synth(text, voice, rate).copy()


def speech_bounds(audio: np.ndarray, rate: int = 16000, floor: float = 0.02) -> tuple[float, float]:
    """Seconds of the first and last 10 ms frame whose peak exceeds `floor` (the truth for VAD tests)."""
    hop = rate // 100
    frames = audio[: audio.size - audio.size % hop].reshape(-1, hop)
    loud = np.nonzero(np.abs(frames).max(axis=1) > floor)[0]
    if loud.size == 0:
        raise ValueError("no speech above the floor")
    return loud[0] * hop / rate, (loud[-1] + 1) * hop / rate
