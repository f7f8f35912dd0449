"""Streaming conversion of PCM16 audio at a client's rate to float32 at 16 kHz.

Clients send chunks of any size; resampling each chunk on its own would click
at every boundary, so the resampler keeps filter state across chunks. soxr's
streaming resampler is used when installed; otherwise a polyphase FIR filter
(designed with scipy) with the same streaming behaviour.
"""

from __future__ import annotations

import logging
from math import gcd
from typing import Optional

import numpy as np

from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.wire.protocol import ProtocolError

log = logging.getLogger(__name__)


def pcm16_to_float32(pcm: bytes) -> np.ndarray:
    """PCM16 little-endian bytes -> float32 samples in [-1, 1). Odd byte counts are a protocol error."""
    if len(pcm) % 2:
        raise ProtocolError(
            "bad_message", f"audio payload has {len(pcm)} bytes; PCM16 needs an even count", fatal=False
        )
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


class _PolyphaseStream:
    """Rational-ratio resampler (up L, low-pass, down M) that carries its input history across chunks.

    The filter's delay is removed so output sample k lines up with input time k / out_rate.
    """

    def __init__(self, in_rate: int, out_rate: int, zero_crossings: int = 16) -> None:
        from scipy.signal import firwin

        g = gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        wide = max(self.up, self.down)
        # Half-length a multiple of `down`: the delay is then a whole number of output samples.
        half = self.down * -(-zero_crossings * wide // self.down)
        taps = firwin(2 * half + 1, 0.95 / wide, window=("kaiser", 8.0)) * self.up
        self.taps_per_phase = -(-len(taps) // self.up)
        padded = np.zeros(self.taps_per_phase * self.up)
        padded[: len(taps)] = taps
        self.phases = padded.reshape(self.taps_per_phase, self.up).T.copy()  # (up, T): phases[p, i] = h[p + i*up]
        self.skip = half // self.down  # outputs that are pure filter delay
        self.lookahead = -(-half // self.up) + 1  # zero input samples that push the delayed tail out
        self.buf = np.zeros(self.taps_per_phase, dtype=np.float64)
        self.buf_start = -self.taps_per_phase  # absolute index of buf[0]; negative indices are silence
        self.n_in = 0  # real input samples seen
        self.k = 0  # next output index (before removing the delay)
        self.emitted = 0

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.buf = np.concatenate([self.buf, x.astype(np.float64)])
        total_in = self.buf_start + len(self.buf)
        k_end = -(-total_in * self.up // self.down)  # outputs whose newest input sample we have
        ks = np.arange(self.k, k_end, dtype=np.int64)
        if len(ks):
            base = ks * self.down // self.up
            phase = ks * self.down - base * self.up
            idx = base[:, None] - np.arange(self.taps_per_phase)[None, :] - self.buf_start
            y = np.einsum("ij,ij->i", self.phases[phase], self.buf[idx])
        else:
            y = np.zeros(0)
        self.k = k_end
        keep_from = self.k * self.down // self.up - self.taps_per_phase + 1
        drop = max(0, keep_from - self.buf_start)
        self.buf = self.buf[drop:]
        self.buf_start += drop
        skip = max(0, min(len(y), self.skip - (self.k - len(y))))
        return y[skip:].astype(np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        self.n_in += len(x)
        y = self._run(x)
        self.emitted += len(y)
        return y

    def flush(self) -> np.ndarray:
        want = -(-self.n_in * self.up // self.down) - self.emitted
        y = self._run(np.zeros(self.lookahead + self.taps_per_phase))[: max(0, want)]
        self.emitted += len(y)
        return y


class StreamResampler:
    """PCM16 chunks at `in_rate` in, float32 chunks at `out_rate` (16 kHz) out, continuous across chunks.

    backend: "auto" (soxr if importable, else scipy), "soxr" or "scipy".
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE, backend: str = "auto") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be > 0, got {in_rate} -> {out_rate}")
        if backend not in ("auto", "soxr", "scipy"):
            raise ValueError(f"backend must be 'auto', 'soxr' or 'scipy', got {backend!r}")
        self.in_rate, self.out_rate = in_rate, out_rate
        self._soxr: Optional[object] = None
        self._poly: Optional[_PolyphaseStream] = None
        self.backend = "none"
        if in_rate != out_rate:
            if backend in ("auto", "soxr"):
                try:
                    import soxr

                    self._soxr = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
                    self.backend = "soxr"
                except ImportError:
                    if backend == "soxr":
                        from magtkd_stream.resources import require

                        require("soxr", "soxr", "streaming resampling")
                    log.debug("soxr not installed; resampling with a scipy polyphase filter")
            if self._soxr is None:
                self._poly = _PolyphaseStream(in_rate, out_rate)
                self.backend = "scipy"
        self.samples_in = 0
        self.samples_out = 0
        self._done = False

    def process(self, pcm: bytes) -> np.ndarray:
        """Resample one chunk of PCM16 bytes; returns what is ready (possibly fewer samples than given)."""
        if self._done:
            raise RuntimeError("resampler already flushed; create a new one for a new stream")
        x = pcm16_to_float32(pcm)
        self.samples_in += len(x)
        if self._soxr is not None:
            y = self._soxr.resample_chunk(x)  # type: ignore[attr-defined]
        elif self._poly is not None:
            y = self._poly.process(x)
        else:
            y = x
        self.samples_out += len(y)
        return np.ascontiguousarray(y, dtype=np.float32)

    def flush(self) -> np.ndarray:
        """The samples still held in the filter; call once at the end of the stream."""
        if self._done:
            return np.zeros(0, dtype=np.float32)
        self._done = True
        if self._soxr is not None:
            y = self._soxr.resample_chunk(np.zeros(0, dtype=np.float32), last=True)  # type: ignore[attr-defined]
        elif self._poly is not None:
            y = self._poly.flush()
        else:
            y = np.zeros(0, dtype=np.float32)
        self.samples_out += len(y)
        return np.ascontiguousarray(y, dtype=np.float32)
