"""Utterance encoders behind one interface; `build_encoder` picks the class from config alone.

Which class serves a modality is decided by the config's `kind` field, never by
the profile's name, so a new profile is a new YAML file and nothing else.
"""

from __future__ import annotations

from magtkd_stream.config import Config
from magtkd_stream.names import MODALITIES
from magtkd_stream.encoders.base import (
    AudioInput,
    Encoder,
    EncoderOutput,
    ModalityHead,
    TextInput,
    UtteranceModel,
    VideoInput,
)

__all__ = [
    "AudioInput",
    "Encoder",
    "EncoderOutput",
    "ModalityHead",
    "TextInput",
    "UtteranceModel",
    "VideoInput",
    "build_encoder",
]


def build_encoder(modality: str, cfg: Config) -> Encoder:
    """The backbone encoder of one modality as the config describes it (weights loaded, eval mode).

    The RNG is seeded from cfg.seed while building (and restored after), so a
    random-init backbone (the tiny profile) comes out identical in training and
    in the service: checkpoints store only the trained part.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _build(modality, cfg).eval()


def _build(modality: str, cfg: Config) -> Encoder:
    enc: Encoder
    if modality == "text":
        from magtkd_stream.encoders.text import PromptTextEncoder

        enc = PromptTextEncoder(cfg.encoders.text)
    elif modality == "audio":
        if cfg.encoders.audio.kind == "whisper":
            from magtkd_stream.encoders.whisper_audio import WhisperAudioEncoder

            enc = WhisperAudioEncoder(cfg.encoders.audio, device=cfg.encoders.asr.device)
        else:
            from magtkd_stream.encoders.hf_audio import HFAudioEncoder

            enc = HFAudioEncoder(cfg.encoders.audio)
    elif modality == "video":
        if cfg.encoders.video.kind == "face_cnn":
            from magtkd_stream.encoders.face import FaceCNNEncoder

            enc = FaceCNNEncoder(cfg.encoders.video)
        else:
            from magtkd_stream.encoders.hf_video import HFVideoEncoder

            enc = HFVideoEncoder(cfg.encoders.video)
    else:
        raise ValueError(f"unknown modality {modality!r}; expected one of {list(MODALITIES)}")
    return enc
