"""The whole configuration (`Config`): one typed tree of sections, saved in every checkpoint and run folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from magtkd_stream.config.checks import check as _check
from magtkd_stream.config.checks import one_of as _one_of
from magtkd_stream.config.model import EncodersConfig, KDConfig, MAGTConfig
from magtkd_stream.config.stream import StreamConfig
from magtkd_stream.config.train import TrainConfig


@dataclass
class Config:
    """The whole resolved configuration; saved in every checkpoint and run folder."""

    profile: str = "full"  # a name recorded in checkpoints; loading refuses a mismatch
    labels: str = "meld"
    feature_dim: int = 768  # width of every utterance vector fed to MAGT
    checkpoint: Optional[str] = None  # trained weights the service loads
    seed: int = 0
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    magt: MAGTConfig = field(default_factory=MAGTConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # recipe, read by training/
    stream: StreamConfig = field(default_factory=StreamConfig)  # service options, read by the recognizer and actors/

    def __post_init__(self) -> None:
        from magtkd_stream.labels import LABEL_SETS

        _one_of(self.labels, tuple(LABEL_SETS), "labels")
        _check(self.feature_dim > 0, "feature_dim", "must be > 0")
        audio, asr = self.encoders.audio, self.encoders.asr
        _check(audio.kind != "whisper" or asr.kind != "faster_whisper" or audio.window_seconds == asr.window_seconds,
               "encoders.audio.window_seconds",
               f"is {audio.window_seconds} but encoders.asr.window_seconds is {asr.window_seconds}: the service "
               "takes the audio vector from the ASR's encoder pass, so both must use the same window")
        if isinstance(self.stream, Mapping):  # Config(stream={...}) in code: typed like a loaded file
            self.stream = StreamConfig.from_dict(self.stream)
