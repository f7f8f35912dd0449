"""Typed configuration: dataclasses filled from a YAML file plus command-line overrides.

A profile (lite, full, tiny) is nothing but a YAML file in configs/; code reads
the fields below and never branches on the profile's name. Unknown keys and
badly typed or out-of-range values are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import yaml

from magtkd_stream.names import MODALITIES, SAMPLE_RATE

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value: str, allowed: Sequence[str], key: str) -> None:
    _check(value in allowed, key, f"got {value!r}, expected one of {list(allowed)}")


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
    pair_prob: float = 0.0  # lend absent modalities from same-class utterances of other sources (training/pairing.py)
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
    # Audio cut by the service's VAD before it is encoded (training/stage1_inputs.py: served_clip), so the
    # vectors a head trains on are the ones the service computes. Off for synthetic non-speech audio.
    vad_audio: bool = False
    # Per-speaker running normalisation of the audio vector (magtkd_stream/speaker_norm.py): the prior
    # counts for this many utterances; 0 = off. The heads train on normalised vectors and the
    # checkpoint carries the prior, so the service normalises each session's speakers the same way.
    speaker_norm: float = 0.0
    # Augmented copies of each training speech clip for a frozen audio backbone's head (gain, noise, room,
    # speed, AAC; training/audio_augment.py), each copy a session of its own for speaker_norm; 0 = off.
    augment_copies: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.speaker_norm, (int, float)) and not isinstance(self.speaker_norm, bool)
               and self.speaker_norm >= 0, "train.speaker_norm",
               f"must be a number >= 0 (0 = off), got {self.speaker_norm!r}")
        _check(isinstance(self.augment_copies, int) and not isinstance(self.augment_copies, bool)
               and 0 <= self.augment_copies <= 16, "train.augment_copies",
               f"must be an integer in [0, 16] (0 = off), got {self.augment_copies!r}")


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
    stream: dict[str, Any] = field(default_factory=dict)  # service options, read by actors/

    def __post_init__(self) -> None:
        from magtkd_stream.labels import LABEL_SETS

        _one_of(self.labels, tuple(LABEL_SETS), "labels")
        _check(self.feature_dim > 0, "feature_dim", "must be > 0")
        audio, asr = self.encoders.audio, self.encoders.asr
        _check(audio.kind != "whisper" or asr.kind != "faster_whisper" or audio.window_seconds == asr.window_seconds,
               "encoders.audio.window_seconds",
               f"is {audio.window_seconds} but encoders.asr.window_seconds is {asr.window_seconds}: the service "
               "takes the audio vector from the ASR's encoder pass, so both must use the same window")
        # The service section is typed in stream_config.py; checking it here makes a
        # misspelt stream key fail at load time, as every other key does.
        from magtkd_stream.stream_config import StreamConfig

        StreamConfig.from_dict(self.stream)


def _path_of(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return CONFIG_DIR / f"{name_or_path}.yaml"


def apply_override(tree: dict[str, Any], item: str) -> None:
    """Set KEY=VALUE (a dotted key) in a config tree; the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.stage2.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {p!r} is not a section")
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Dataclass from a dict, recursively; unknown keys and wrong types name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or '<root>'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; known keys here: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        sub = _dataclass_type(cls, name)
        kwargs[name] = _build(sub, value, key) if sub is not None else _coerce(fields[name], value, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"{prefix or '<root>'}: {exc}") from None


def _dataclass_type(cls: type, name: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == name).default_factory  # type: ignore[misc]
    if default is dataclasses.MISSING:
        return None
    probe = default()
    return type(probe) if dataclasses.is_dataclass(probe) else None


_SIMPLE = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(f: dataclasses.Field, value: Any, key: str) -> Any:
    """Check a leaf value against the field's annotation (strings, as `from __future__` gives)."""
    ann = str(f.type).replace("typing.", "")
    optional = ann.startswith("Optional[")
    base = ann[len("Optional[") : -1] if optional else ann
    if value is None:
        _check(optional, key, f"may not be empty (expected {base})")
        return None
    if base in _SIMPLE:
        want = _SIMPLE[base]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if want is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        _check(ok, key, f"expected {base}, got {type(value).__name__} {value!r}")
        return value
    if base.startswith("list["):
        _check(isinstance(value, list), key, f"expected a list, got {type(value).__name__}")
        if base == "list[float]":
            _check(all(isinstance(v, (int, float)) for v in value), key, "expected a list of numbers")
            return [float(v) for v in value]
        if base == "list[int]":
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            _check(ok, key, f"expected a list of integers, got {value!r}")
            return list(value)
        return value
    if base.startswith("dict["):
        _check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return value
    return value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, YAML/JSON-ready form of a config (what checkpoints and run folders store)."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from config_to_dict output (or any partial mapping)."""
    return _build(Config, data, "")


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file; ConfigError naming the file when it is not one."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


RECIPE_PREFIX = "train_"  # configs/train_*.yaml are magtkd-train recipes; the rest are service profiles


def load_config(name_or_path: str | Path = "lite", overrides: Sequence[str] = ()) -> Config:
    """Load configs/<name>.yaml (or a path) and apply KEY=VALUE overrides (dotted keys).

    Raises ConfigError naming the unknown key, the file, or the bad value.
    """
    path = _path_of(name_or_path)
    if not path.exists():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        profiles = [n for n in names if not n.startswith(RECIPE_PREFIX)]
        recipes = [n for n in names if n.startswith(RECIPE_PREFIX)]
        raise ConfigError(f"config {str(name_or_path)!r} not found (looked at {path}); profiles: "
                          f"{', '.join(profiles)} (training recipes, for magtkd-train: {', '.join(recipes)})")
    data = read_yaml(path)
    for item in overrides:
        apply_override(data, item)
    try:
        return _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None
