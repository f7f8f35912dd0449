"""Audio encoder of the lite profile: pooled Whisper encoder states, the same ones ASR computes.

Used where audio must be encoded without a transcript (feature extraction for
training, batch evaluation). The streaming service takes the vector straight
from `ASRResult.audio_vector` instead, so live audio is encoded once; both go
through asr.py's feature and pooling functions, so the two vectors agree.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch

from magtkd_stream.streaming.asr import (
    DEFAULT_SILENCE_RMS,
    WhisperASR,
    encoder_frames,
    is_audible,
    pool_encoder_states,
    truncate,
    validate_waveform,
    window_mel_frames,
)
from magtkd_stream.config import ASRConfig, AudioEncoderConfig
from magtkd_stream.encoders.base import AudioInput, Encoder, EncoderOutput


class WhisperAudioEncoder(Encoder):
    """Mean and std of a frozen Whisper encoder's states over the utterance: (B, 2*d_model).

    Silent, empty or sub-100-ms audio is reported absent (zeros, present=False)
    and skips the encoder. Holds no trainable parameters; the ctranslate2 model
    is shared with a WhisperASR when one is given.
    """

    modality: ClassVar[str] = "audio"

    def __init__(
        self,
        cfg: AudioEncoderConfig,
        asr: Optional[WhisperASR] = None,
        silence_rms: float = DEFAULT_SILENCE_RMS,
        device: str = "auto",
        cpu_threads: int = 0,
    ) -> None:
        super().__init__()
        if cfg.kind != "whisper":
            raise ValueError(f"WhisperAudioEncoder needs encoders.audio.kind 'whisper', got {cfg.kind!r}")
        self.cfg = cfg
        self.silence_rms = silence_rms
        self.asr = asr or WhisperASR(
            ASRConfig(kind="faster_whisper", model=cfg.model, device=device, window_seconds=cfg.window_seconds),
            cpu_threads=cpu_threads,
        )
        if self.asr.cfg.window_seconds != cfg.window_seconds:
            raise ValueError(
                f"encoders.audio.window_seconds {cfg.window_seconds} differs from the shared ASR's "
                f"{self.asr.cfg.window_seconds}; the audio vectors must come from the same window"
            )
        self.dim = self.asr.dim

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        """Log-mel features (B, n_mels, window), encoder frame counts (B,), and presence (B,)."""
        waves = []
        for i, item in enumerate(items):
            if not isinstance(item, AudioInput):
                raise ValueError(f"items[{i}]: expected AudioInput, got {type(item).__name__}")
            wave = validate_waveform(item.waveform, f"items[{i}].waveform")
            waves.append(truncate(wave, self.cfg.max_seconds))
        present = [is_audible(w, self.silence_rms) for w in waves]
        # Absent items keep an all-zero feature row; forward never encodes them.
        idx = [i for i, p in enumerate(present) if p]
        frames = window_mel_frames([waves[i].size for i in idx], self.cfg.window_seconds)
        feats = np.zeros((len(waves), self.asr.n_mels, frames), dtype=np.float32)
        if idx:
            feats[idx] = self.asr.features([waves[i] for i in idx])
        return {
            "features": torch.from_numpy(feats),
            "n_frames": torch.tensor([encoder_frames(w.size) for w in waves], dtype=torch.long),
            "present": torch.tensor(present, dtype=torch.bool),
        }

    def forward(  # type: ignore[override]
        self, features: torch.Tensor, n_frames: torch.Tensor, present: torch.Tensor
    ) -> EncoderOutput:
        batch = features.shape[0]
        vectors = torch.zeros(batch, self.dim, dtype=torch.float32)
        idx = torch.nonzero(present.cpu(), as_tuple=False).flatten().tolist()
        if idx:
            with torch.no_grad():
                states = self.asr.encode(features[idx].detach().cpu().numpy())
                pooled = pool_encoder_states(states, n_frames.cpu()[idx].tolist())
            vectors[idx] = torch.from_numpy(pooled)
        return EncoderOutput(vectors=vectors, present=present.cpu().clone())
