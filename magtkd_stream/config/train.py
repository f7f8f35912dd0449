"""The training recipe's section (`train:`): both stages' optimiser and loop settings, pairing, selection."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from magtkd_stream.config.checks import check as _check
from magtkd_stream.config.checks import one_of as _one_of
from magtkd_stream.names import MODALITIES


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class StageConfig:
    """Optimiser and loop settings shared by both training stages (validated under `_key`)."""

    _key: ClassVar[str] = "train.stage"
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 16
    epochs: int = 30
    grad_clip: float = 10.0  # max global gradient norm; 0 = no clipping
    warmup_ratio: float = 0.1  # share of optimizer steps (batches) spent warming up, then linear decay to 0
    patience: int = 0  # stop after this many epochs without a better dev score; 0 = never stop early
    num_workers: int = 0  # DataLoader worker processes
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:N", "mps"

    def __post_init__(self) -> None:
        k = self._key
        _check(self.lr > 0, f"{k}.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"{k}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.batch_size >= 1, f"{k}.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.epochs >= 1, f"{k}.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.grad_clip >= 0, f"{k}.grad_clip", f"must be >= 0 (0 = no clipping), got {self.grad_clip}")
        _check(0 <= self.warmup_ratio < 1, f"{k}.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.patience >= 0, f"{k}.patience", f"must be >= 0 (0 = no early stop), got {self.patience}")
        _check(self.num_workers >= 0, f"{k}.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(
            bool(_DEVICE.match(self.device)),
            f"{k}.device",
            f"got {self.device!r}, expected auto, cpu, mps, cuda or cuda:N",
        )


@dataclass
class Stage1Config(StageConfig):
    """Stage 1 (utterance encoders, one by one); which layers train is set per encoder in `encoders`."""

    _key: ClassVar[str] = "train.stage1"
    lr: float = 1e-5
    encoder_lr: Optional[float] = None  # fine-tuned backbone layers; empty = lr (heads always use lr)
    finetune_epochs: Optional[int] = None  # epochs when backbone layers train; empty = epochs
    weight_decay: float = 0.01
    batch_size: int = 4  # utterances
    epochs: int = 10
    eval_batch_size: int = 32  # utterances per batch when encoding for caches and evaluation
    cache_on_disk: bool = True  # keep frozen-backbone vectors in the run folder for reuse
    asr_style_prob: float = 0.0  # text: chance each training turn is rewritten as ASR output (no "!", "...")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0.0 <= self.asr_style_prob <= 1.0, "train.stage1.asr_style_prob",
               f"must be in [0, 1], got {self.asr_style_prob}")
        _check(self.encoder_lr is None or self.encoder_lr > 0, "train.stage1.encoder_lr",
               f"must be > 0 or empty (= lr), got {self.encoder_lr}")
        _check(self.finetune_epochs is None or self.finetune_epochs >= 1, "train.stage1.finetune_epochs",
               f"must be >= 1 or empty (= epochs), got {self.finetune_epochs}")


SELECT_METRICS: tuple[str, ...] = ("weighted_f1", "macro_f1", "accuracy")


@dataclass
class Stage2Config(StageConfig):
    """Stage 2 (MAGT on extracted features); the official settings are the defaults."""

    _key: ClassVar[str] = "train.stage2"
    lr: float = 1e-4
    weight_decay: float = 1e-6
    batch_size: int = 16  # dialogues
    epochs: int = 30
    windows: list[int] = field(default_factory=lambda: [0, 2, 4, 8])  # dev windows reported; 0 = full context
    train_window: Optional[int] = None  # context MAGT trains with; None = magt.window; 0 = full context
    select_metric: str = "weighted_f1"  # dev metric that picks the epoch (never test)
    pair_prob: float = 0.0  # lend absent modalities from same-class utterances of other sources (training/stage2/pairing.py)
    pair_agree: float = 0.5  # share of lent vectors that come from the utterance's own class
    pair_prob_by: dict[str, float] = field(default_factory=dict)  # per lent modality, overrides pair_prob
    pair_agree_by: dict[str, float] = field(default_factory=dict)  # per lent modality, overrides pair_agree
    asr_style: bool = False  # MAGT's text features (every split) come from transcripts written as the ASR writes them
    compose_dialogues: int = 0  # multimodal conversations composed per epoch from the train sources (paired_dialogues.py)
    compose_dev_dialogues: int = 0  # the same, composed once from the dev sources and added to the selection set
    modality_dropout: float = 0.0  # per training utterance, each present modality is masked this often (one is kept)
    class_balance: float = 0.0  # fused CE weight per class = (frequency)^-class_balance; 0 = plain CE, 0.5 = sqrt
    calibrate: bool = False  # fit a softmax temperature per modality and for the fused output on dev
    served_repeat: int = 1  # copies per epoch of each dialogue of source "served" (vectors the service computed)
    select_source: str = ""  # pick the epoch on this dev source alone when present (e.g. "served"); "" = all of dev

    def pairing(self) -> tuple[dict[str, float], dict[str, float]]:
        """(prob, agree) for each modality that may be lent, with the per-modality overrides applied."""
        mods = MODALITIES
        return ({m: self.pair_prob_by.get(m, self.pair_prob) for m in mods},
                {m: self.pair_agree_by.get(m, self.pair_agree) for m in mods})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(len(self.windows) > 0, "train.stage2.windows", "must list at least one window (0 = full context)")
        _check(isinstance(self.asr_style, bool), "train.stage2.asr_style",
               f"must be true or false, got {self.asr_style!r}")
        _check(isinstance(self.select_source, str), "train.stage2.select_source",
               f"must be a source name or empty, got {self.select_source!r}")
        for key in ("compose_dialogues", "compose_dev_dialogues", "served_repeat"):
            v = getattr(self, key)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"train.stage2.{key}",
                   f"must be an integer >= 0, got {v!r}")
        _check(0.0 <= self.modality_dropout < 1.0, "train.stage2.modality_dropout",
               f"must be in [0, 1), got {self.modality_dropout}")
        _check(0.0 <= self.class_balance <= 1.0, "train.stage2.class_balance",
               f"must be in [0, 1] (0 = plain cross-entropy, 1 = inverse frequency), got {self.class_balance}")
        _check(isinstance(self.calibrate, bool), "train.stage2.calibrate", f"must be true or false, got {self.calibrate!r}")
        _check(0.0 <= self.pair_prob <= 1.0, "train.stage2.pair_prob", f"must be in [0, 1], got {self.pair_prob}")
        _check(0.0 <= self.pair_agree <= 1.0, "train.stage2.pair_agree", f"must be in [0, 1], got {self.pair_agree}")
        for name in ("pair_prob_by", "pair_agree_by"):
            for m, v in getattr(self, name).items():
                _check(m in MODALITIES, f"train.stage2.{name}.{m}",
                       "unknown modality; expected text, audio or video")
                _check(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0,
                       f"train.stage2.{name}.{m}", f"must be a number in [0, 1], got {v!r}")
        _check(
            all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in self.windows),
            "train.stage2.windows",
            f"must be integers >= 0, got {self.windows}",
        )
        _check(
            self.train_window is None or self.train_window >= 0,
            "train.stage2.train_window",
            f"must be >= 0 (0 = full context) or empty (= magt.window), got {self.train_window}",
        )
        _one_of(self.select_metric, SELECT_METRICS, "train.stage2.select_metric")


@dataclass
class TrainConfig:
    """Training recipe: one section per stage."""

    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    # Audio cut by the service's VAD before it is encoded (training/stage1/inputs.py: served_clip), so the
    # vectors a head trains on are the ones the service computes. Off for synthetic non-speech audio.
    vad_audio: bool = False
    # Per-speaker running normalisation of the audio vector (magtkd_stream/model/speaker_norm.py): the prior
    # counts for this many utterances; 0 = off. The heads train on normalised vectors and the
    # checkpoint carries the prior, so the service normalises each session's speakers the same way.
    speaker_norm: float = 0.0
    # Augmented copies of each training speech clip for a frozen audio backbone's head (gain, noise, room,
    # speed, AAC; training/stage1/audio_augment.py), each copy a session of its own for speaker_norm; 0 = off.
    augment_copies: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.speaker_norm, (int, float)) and not isinstance(self.speaker_norm, bool)
               and self.speaker_norm >= 0, "train.speaker_norm",
               f"must be a number >= 0 (0 = off), got {self.speaker_norm!r}")
        _check(isinstance(self.augment_copies, int) and not isinstance(self.augment_copies, bool)
               and 0 <= self.augment_copies <= 16, "train.augment_copies",
               f"must be an integer in [0, 16] (0 = off), got {self.augment_copies!r}")
