"""Voice augmentation: the same clip as another microphone, room and channel would deliver it.

The audio head learns from 16 RAVDESS actors recorded in one studio; users
speak through laptop microphones, in rooms, through lossy codecs. Each
augmented copy of a clip draws one *channel* (gain, background noise at a
signal-to-noise ratio, a room's reverberation, a speed change, an AAC round
trip) from a seeded generator, so copies are reproducible and a channel can be
held fixed over one speaker's clips, as it is within a live session.

Written here rather than taken from audiomentations: that package pins
soxr < 1.0, which conflicts with the soxr the pinned stack needs; the five
transforms below need only numpy, scipy, soxr and PyAV (all already pinned).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from magtkd_stream.names import SAMPLE_RATE



@dataclass(frozen=True)
class Channel:
    """One drawn set of perturbations; `describe()` goes into cache fingerprints."""

    gain_db: float
    snr_db: float  # white-ish background noise; inf: none
    rt60_s: float  # reverberation time of a synthetic room; 0: dry
    speed: float  # resampling factor (tempo and pitch together, as a different voice speed)
    aac_kbps: int  # AAC round trip bit rate; 0: none

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges the channels are drawn from (uniform), and how often each perturbation applies."""

    gain_db: tuple[float, float] = (-8.0, 6.0)
    snr_db: tuple[float, float] = (12.0, 35.0)
    noise_prob: float = 0.7
    rt60_s: tuple[float, float] = (0.15, 0.7)
    reverb_prob: float = 0.5
    speed: tuple[float, float] = (0.92, 1.08)
    speed_prob: float = 0.5
    aac_kbps: tuple[int, ...] = (24, 48, 96)
    aac_prob: float = 0.5

    def draw(self, rng: np.random.Generator) -> Channel:
        """A channel; every random number is drawn whether or not it applies, so settings stay comparable."""
        gain = float(rng.uniform(*self.gain_db))
        snr, use_noise = float(rng.uniform(*self.snr_db)), rng.random() < self.noise_prob
        rt60, use_reverb = float(rng.uniform(*self.rt60_s)), rng.random() < self.reverb_prob
        speed, use_speed = float(rng.uniform(*self.speed)), rng.random() < self.speed_prob
        kbps, use_aac = int(rng.choice(self.aac_kbps)), rng.random() < self.aac_prob
        return Channel(gain_db=round(gain, 2), snr_db=round(snr, 2) if use_noise else float("inf"),
                       rt60_s=round(rt60, 3) if use_reverb else 0.0, speed=round(speed, 3) if use_speed else 1.0,
                       aac_kbps=kbps if use_aac else 0)


def room_response(rt60_s: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response: the direct path, then noise decaying by 60 dB over rt60_s."""
    n = max(1, int(rt60_s * sr))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000): -60 dB at rt60
    tail[: int(0.004 * sr)] = 0.0  # the first reflections arrive a few ms after the direct sound
    ir = np.concatenate([[1.0], 0.35 * tail / (np.sqrt(np.sum(tail ** 2)) + 1e-9)])
    return ir.astype(np.float32)


def aac_round_trip(wave: np.ndarray, kbps: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Encode to AAC and decode back (PyAV, in memory), as media files and calls deliver speech."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="adts") as out:
        stream = out.add_stream("aac", rate=sr)
        stream.bit_rate = kbps * 1000
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.clip(wave, -1, 1).astype(np.float32).reshape(1, -1), format="flt",
                                           layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buf.seek(0)
    chunks = []
    with av.open(buf, mode="r", format="adts") as inp:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        for decoded in inp.decode(audio=0):
            for f in resampler.resample(decoded):
                chunks.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            chunks.append(f.to_ndarray().reshape(-1))
    back = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    # AAC adds a priming delay; align on the cross-correlation peak of the first second, then trim to length
    lag = _lag(wave[:sr], back[: 2 * sr])
    back = back[lag: lag + wave.size]
    if back.size < wave.size:
        back = np.pad(back, (0, wave.size - back.size))
    return back.astype(np.float32)


def _lag(a: np.ndarray, b: np.ndarray, max_lag: int = 4096) -> int:
    if a.size == 0 or b.size <= a.size // 2:
        return 0
    best, best_lag = -np.inf, 0
    for lag in range(0, min(max_lag, b.size - a.size // 2), 16):
        seg = b[lag: lag + a.size]
        v = float(np.dot(a[: seg.size], seg))
        if v > best:
            best, best_lag = v, lag
    return best_lag


def apply_channel(wave: np.ndarray, channel: Channel, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The clip through one channel: speed, room, noise, gain, codec (in that order); float32 in [-1, 1]."""
    from scipy.signal import fftconvolve

    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return x
    if channel.speed != 1.0:
        import soxr

        x = soxr.resample(x, sr, sr / channel.speed).astype(np.float32)  # played faster: fewer samples
    if channel.rt60_s > 0:
        x = fftconvolve(x, room_response(channel.rt60_s, rng, sr))[: x.size].astype(np.float32)
    if np.isfinite(channel.snr_db):
        power = float(np.mean(x ** 2)) + 1e-12
        noise = rng.standard_normal(x.size).astype(np.float32)
        noise = np.cumsum(noise) * 0.02 + noise  # a little low-frequency weight, as room noise has
        noise -= noise.mean()
        noise *= np.sqrt(power / (10 ** (channel.snr_db / 10)) / (float(np.mean(noise ** 2)) + 1e-12))
        x = x + noise
    x = x * (10 ** (channel.gain_db / 20))
    peak = float(np.max(np.abs(x)))
    if peak > 0.99:  # a real channel clips; keep the shape instead of wrapping
        x = x * (0.99 / peak)
    if channel.aac_kbps:
        x = aac_round_trip(x, channel.aac_kbps, sr)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def copy_rng(seed: int, speaker: str, copy: int) -> np.random.Generator:
    """The generator of one speaker's k-th augmented copy: the same inputs always give the same channel."""
    key = [seed, copy] + [ord(c) for c in speaker]
    return np.random.default_rng(key)
