"""The model's sections of a profile: encoders (text, audio, video, ASR), MAGT and knowledge distillation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from magtkd_stream.config.checks import check as _check
from magtkd_stream.config.checks import one_of as _one_of
from magtkd_stream.names import MODALITIES, SAMPLE_RATE


@dataclass
class TextEncoderConfig:
    """Prompted text encoder: hidden state at the mask token of the MAGTKD prompt."""

    model: str = "roberta-large"  # HF id, local folder, or "package:<module>"
    tokenizer: Optional[str] = None  # defaults to `model`
    random_init: Optional[dict[str, Any]] = None  # HF config kwargs: build random weights (tests)
    max_tokens: int = 512
    context_turns: int = 0  # preceding utterances kept in the prompt; 0 = all
    template: str = "For {speaker}: {text} Now {speaker} feels {mask}"
    trainable_layers: int = 0  # top transformer layers fine-tuned; -1 = all

    def __post_init__(self) -> None:
        _check(self.max_tokens >= 16, "encoders.text.max_tokens", f"must be >= 16, got {self.max_tokens}")
        _check(self.context_turns >= 0, "encoders.text.context_turns", "must be >= 0")
        _check("{mask}" in self.template, "encoders.text.template", "must contain {mask}")
        _check(self.trainable_layers >= -1, "encoders.text.trainable_layers", "must be >= -1")


@dataclass
class AudioEncoderConfig:
    """Utterance audio encoder: a waveform transformer, or pooled Whisper encoder states."""

    kind: str = "hf"  # "hf" (data2vec-style waveform model) or "whisper" (pooled ASR encoder pass)
    model: str = "facebook/data2vec-audio-base-960h"
    random_init: Optional[dict[str, Any]] = None
    sample_rate: int = SAMPLE_RATE
    max_seconds: float = 15.0  # longer utterances are cut (logged), never crash
    trainable_layers: int = 0
    window_seconds: float = 30.0  # kind whisper: encoder window, as encoders.asr.window_seconds (must match)

    def __post_init__(self) -> None:
        _one_of(self.kind, ("hf", "whisper"), "encoders.audio.kind")
        _check(1.0 <= self.window_seconds <= 30.0, "encoders.audio.window_seconds",
               f"must be in [1, 30] seconds, got {self.window_seconds}")
        _check(self.sample_rate == SAMPLE_RATE, "encoders.audio.sample_rate", f"encoders run at {SAMPLE_RATE} Hz")
        _check(0 < self.max_seconds <= 30, "encoders.audio.max_seconds", "must be in (0, 30]")
        _check(self.trainable_layers >= -1, "encoders.audio.trainable_layers", "must be >= -1")


@dataclass
class VideoEncoderConfig:
    """Utterance video encoder: a clip transformer, or face crops through a small CNN."""

    kind: str = "hf"  # "hf" (TimeSformer-style clip model) or "face_cnn" (Haar faces + mini-Xception)
    model: str = "facebook/timesformer-base-finetuned-k400"
    random_init: Optional[dict[str, Any]] = None
    num_frames: int = 8
    image_size: Optional[int] = None  # None: the model's own
    image_mean: Optional[list[float]] = None  # None: the model's own processor statistics
    image_std: Optional[list[float]] = None
    trainable_layers: int = 0
    # face_cnn: frames are shrunk to this longest side before face detection, whose cost grows with
    # its square (actors/bench_faces.py); at 320 a 640x480 frame still finds faces from 60 px wide
    detect_side: int = 320
    # face_cnn: "blazeface" (MediaPipe's short-range detector on LiteRT; finds small, soft and tilted
    # faces, about 8x faster) or "haar" (OpenCV's frontal cascade; no extra packages)
    detector: str = "haar"

    def __post_init__(self) -> None:
        _one_of(self.kind, ("hf", "face_cnn"), "encoders.video.kind")
        _one_of(self.detector, ("haar", "blazeface"), "encoders.video.detector")
        _check(self.num_frames >= 1, "encoders.video.num_frames", "must be >= 1")
        _check(isinstance(self.detect_side, int) and self.detect_side >= 64, "encoders.video.detect_side",
               f"must be an integer >= 64 pixels, got {self.detect_side!r}")
        for key, val in (("image_mean", self.image_mean), ("image_std", self.image_std)):
            _check(val is None or len(val) == 3, f"encoders.video.{key}", "must have 3 values (RGB)")


@dataclass
class ASRConfig:
    """Speech recognizer; "scripted" returns given transcripts and exists for tests."""

    kind: str = "faster_whisper"  # or "scripted"
    model: str = "small"  # faster-whisper size, local folder, or "package:<module>"
    device: str = "auto"
    compute_type: str = "default"
    beam_size: int = 1
    language: Optional[str] = "en"
    window_seconds: float = 30.0  # Whisper encoder window for utterances that fit (longer ones get 30 s)

    def __post_init__(self) -> None:
        _one_of(self.kind, ("faster_whisper", "scripted"), "encoders.asr.kind")
        _check(self.beam_size >= 1, "encoders.asr.beam_size", "must be >= 1")
        _check(1.0 <= self.window_seconds <= 30.0, "encoders.asr.window_seconds",
               f"must be in [1, 30] seconds, got {self.window_seconds}")


@dataclass
class EncodersConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)


@dataclass
class MAGTConfig:
    """Multi-modal anchor gated transformer (MAGTKD_SPEC.md, stage 2)."""

    d_model: int = 768
    heads: int = 8
    layers: int = 1
    d_ff: int = 768
    dropout: float = 0.5
    max_speakers: int = 16  # speaker ids 0..max_speakers-1; padding has its own index
    max_len: int = 512  # longest dialogue (position encoding)
    window: int = 0  # 0: whole dialogue; W > 0: causal sliding window of the last W utterances

    def __post_init__(self) -> None:
        _check(self.d_model > 0 and self.heads > 0, "magt.d_model", "d_model and heads must be > 0")
        _check(self.d_model % self.heads == 0, "magt.heads", f"{self.heads} heads must divide d_model {self.d_model}")
        _check(self.layers >= 1, "magt.layers", "must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "magt.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.max_speakers >= 1, "magt.max_speakers", "must be >= 1")
        _check(self.window >= 0, "magt.window", "must be >= 0 (0 = whole dialogue)")


@dataclass
class KDConfig:
    """Knowledge-distillation weights and temperatures (MAGTKD_SPEC.md)."""

    teacher: str = "text"  # modality that teaches the others
    tau: float = 2.0  # soft-label temperature
    tau_feat: float = 1.0  # relation-KL temperature
    w_soft: float = 0.1  # stage-1 weight of the Pearson soft-label loss
    w_feat: float = 1.0  # stage-1 weight of the relation-KL feature loss
    lambda_audio: float = 0.01  # stage-2 auxiliary weight, audio
    lambda_video: float = 0.08  # stage-2 auxiliary weight, video
    stage2_feat: bool = False  # add L_f between a', v' and t' in stage 2
    distill_video: bool = True  # use the distilled video student's features in stage 2

    def __post_init__(self) -> None:
        _one_of(self.teacher, MODALITIES, "kd.teacher")
        _check(self.tau > 0 and self.tau_feat > 0, "kd.tau", "temperatures must be > 0")
