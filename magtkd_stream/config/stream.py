"""The service's section of a profile (`stream:`): actor resources, batching, VAD, window, fault handling.

Built by the one loader (config/profile.py) like every other section; unknown
keys and bad values raise ConfigError naming the full dotted key. The
gateway's section (`stream.gateway`) is typed in config/gateway.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from magtkd_stream.config.checks import ConfigError, integer as _integer, number as _number
from magtkd_stream.config.checks import check as _check_key
from magtkd_stream.config.gateway import GatewayConfig

ACTOR_NAMES: tuple[str, ...] = ("asr", "text", "audio", "video", "fusion")


def _check(ok: bool, key: str, msg: str) -> None:
    """config's check, with keys named from the top of the profile (stream.<key>)."""
    _check_key(ok, f"stream.{key}", msg)


@dataclass
class ActorResources:
    """Ray resources of one kind of actor; `threads` pins torch / CTranslate2 threads inside it."""

    num_cpus: float = 0.25
    num_gpus: float = 0.0
    replicas: int = 1
    threads: int = 1

    def validate(self, key: str) -> None:
        _check(_number(self.num_cpus) and self.num_cpus >= 0, f"{key}.num_cpus", f"must be >= 0, got {self.num_cpus!r}")
        _check(_number(self.num_gpus) and self.num_gpus >= 0, f"{key}.num_gpus", f"must be >= 0, got {self.num_gpus!r}")
        for name in ("replicas", "threads"):
            value = getattr(self, name)
            _check(_integer(value) and value >= 1, f"{key}.{name}", f"must be an integer >= 1, got {value!r}")

    def ray_options(self) -> dict[str, float]:
        """What ray.remote(...).options() takes."""
        return {"num_cpus": float(self.num_cpus), "num_gpus": float(self.num_gpus)}


def _default_actors() -> dict[str, ActorResources]:
    # Whisper does the most work per utterance, so it gets the largest share by default.
    return {
        "asr": ActorResources(num_cpus=0.5, threads=2),
        "text": ActorResources(),
        "audio": ActorResources(),
        "video": ActorResources(),
        "fusion": ActorResources(),
    }


@dataclass
class VADConfig:
    """Segmentation options (probabilities are Silero speech probabilities per 32 ms)."""

    threshold: float = 0.5  # speech when the probability reaches this; silence below threshold - 0.15
    min_silence_ms: int = 300  # end-of-speech hangover
    min_speech_ms: int = 250  # shorter speech bursts (clicks, coughs) are dropped
    max_utterance_s: float = 15.0  # longer speech is cut into several utterances
    pad_ms: int = 200  # audio kept before and after the detected speech

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, msg: str) -> None:
            _check_key(ok, f"vad.{key}", msg)

        check(0.0 < self.threshold < 1.0, "threshold", f"must be in (0, 1), got {self.threshold}")
        check(self.min_silence_ms >= 0, "min_silence_ms", f"must be >= 0, got {self.min_silence_ms}")
        check(self.min_speech_ms >= 0, "min_speech_ms", f"must be >= 0, got {self.min_speech_ms}")
        check(self.pad_ms >= 0, "pad_ms", f"must be >= 0, got {self.pad_ms}")
        check(
            2 * self.pad_ms / 1000 + 1.0 <= self.max_utterance_s <= 30.0,
            "max_utterance_s",
            f"must be in [1 s + 2 * pad_ms, 30 s] (the Whisper window), got {self.max_utterance_s}",
        )

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - 0.15, 0.01)


@dataclass
class DiarizeConfig:
    """Online diarization of a session that carries several voices (a recording, a room microphone).

    Each utterance's speaker embedding joins the most similar speaker found so
    far when its cosine similarity reaches `threshold`, else opens a new one
    (up to max_speakers; after that, the nearest). Utterances shorter than
    min_new_s never open a speaker: their embedding is too noisy to trust.
    """

    enabled: bool = False  # `magtkd-stream run FILE` turns it on unless --no-diarize or --speaker
    max_speakers: int = 4
    threshold: float = 0.7  # selected on two dev sets (docs/RESULTS.md): emotional dev A and LibriSpeech
    min_new_s: float = 1.0
    names: list[str] = field(default_factory=list)  # labels for the speakers in order of appearance
    split: bool = True  # cut a segment in two where the voice changes inside it
    split_threshold: float = 0.75  # ... where the two sides' embeddings are less alike than this (docs/RESULTS.md)
    split_min_s: float = 3.0  # only segments this long are searched (they are embedded before their ASR starts)

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, msg: str) -> None:
            _check_key(ok, f"diarize.{key}", msg)

        check(isinstance(self.enabled, bool), "enabled", f"must be true or false, got {self.enabled!r}")
        check(_integer(self.max_speakers) and 1 <= self.max_speakers <= 26, "max_speakers",
              f"must be an integer in [1, 26], got {self.max_speakers!r}")
        check(_number(self.threshold) and -1.0 <= self.threshold <= 1.0, "threshold",
              f"must be a cosine similarity in [-1, 1], got {self.threshold!r}")
        check(_number(self.min_new_s) and self.min_new_s >= 0, "min_new_s",
              f"must be >= 0 seconds, got {self.min_new_s!r}")
        check(isinstance(self.names, (list, tuple)) and all(isinstance(n, str) and 0 < len(n.strip()) <= 128
                                                           for n in self.names),
              "names", f"must be a list of speaker names (1 to 128 characters each), got {self.names!r}")
        self.names = [n.strip() for n in self.names]
        check(len(set(self.names)) == len(self.names), "names", f"must not repeat a name, got {self.names!r}")
        check(isinstance(self.split, bool), "split", f"must be true or false, got {self.split!r}")
        check(_number(self.split_threshold) and -1.0 <= self.split_threshold <= 1.0, "split_threshold",
              f"must be a cosine similarity in [-1, 1], got {self.split_threshold!r}")
        check(_number(self.split_min_s) and self.split_min_s >= 2 * self.min_new_s, "split_min_s",
              f"must be a number of seconds >= 2 * min_new_s ({2 * self.min_new_s:g}), got {self.split_min_s!r}")
        check(len(self.names) <= self.max_speakers, "names",
              f"names {len(self.names)} speakers, more than max_speakers ({self.max_speakers})")


@dataclass
class StreamConfig:
    """Everything the Ray pipeline reads: actor resources, batching, segmentation, window, fault handling."""

    actors: dict[str, ActorResources] = field(default_factory=_default_actors)
    batch_wait_ms: float = 10.0  # how long a batch waits for more requests after its first
    max_batch: int = 16  # items per encoder batch
    vad: VADConfig = field(default_factory=VADConfig)
    diarize: DiarizeConfig = field(default_factory=DiarizeConfig)  # speakers within one session
    # Utterances MAGT sees per prediction. Empty (None): the window the checkpoint was trained with (its
    # magt.window). 0, as everywhere: no limit, the whole session (a stream never ends, so magt.max_len bounds it).
    window: Optional[int] = None
    max_frames: int = 48  # video frames buffered per session; older ones are thinned, never unbounded
    interim_every_s: float = 0.0  # an emotion_interim event per this much ongoing speech (0: none)
    crop_fps: float = 3.0  # face encoders: frames per second cropped as they arrive (0: all at utterance end)
    shed_video_after: int = 4  # utterances of a session in flight beyond which new ones skip video (overload)
    max_restarts: int = 3  # Ray restarts of a crashed actor before it is declared dead
    call_timeout_s: float = 60.0  # an actor call taking longer fails its utterance
    restart_wait_s: float = 60.0  # how long a call waits for a restarting actor before failing
    watch_every_s: float = 0.5  # actors are pinged this often, so one that died idle is waited for
    log_to_driver: bool = False  # stream actor logs to the driver's console
    gateway: GatewayConfig = field(default_factory=GatewayConfig)  # the websocket gateway's address and limits

    def __post_init__(self) -> None:
        _check(_number(self.batch_wait_ms) and 0 <= self.batch_wait_ms <= 1000, "batch_wait_ms",
               f"must be in [0, 1000] ms, got {self.batch_wait_ms!r}")
        _check(self.window is None or (_integer(self.window) and self.window >= 0), "window",
               f"must be an integer >= 0 (0 = the whole session) or empty (= the checkpoint's magt.window), "
               f"got {self.window!r}")
        for key, low in (("max_batch", 1), ("max_frames", 1), ("shed_video_after", 1),
                         ("max_restarts", 0)):
            value = getattr(self, key)
            _check(_integer(value) and value >= low, key, f"must be an integer >= {low}, got {value!r}")
        _check(_number(self.crop_fps) and 0 <= self.crop_fps <= 60, "crop_fps",
               f"must be in [0, 60] frames per second (0 = crop at the utterance's end), got {self.crop_fps!r}")
        _check(_number(self.interim_every_s) and self.interim_every_s >= 0, "interim_every_s",
               f"must be >= 0 seconds (0 = no interim events), got {self.interim_every_s!r}")
        for key in ("call_timeout_s", "restart_wait_s", "watch_every_s"):
            value = getattr(self, key)
            _check(_number(value) and value > 0, key, f"must be > 0 seconds, got {value!r}")
        _check(isinstance(self.log_to_driver, bool), "log_to_driver", f"must be true or false, got {self.log_to_driver!r}")
        if isinstance(self.gateway, Mapping):  # StreamConfig(gateway={...}) in code
            self.gateway = _gateway_from(self.gateway)
        _check(isinstance(self.gateway, GatewayConfig), "gateway",
               f"must be a mapping, got {type(self.gateway).__name__}")
        unknown = sorted(set(self.actors) - set(ACTOR_NAMES))
        _check(not unknown, f"actors.{unknown[0] if unknown else ''}", f"unknown actor; known: {list(ACTOR_NAMES)}")
        merged = _default_actors()
        merged.update(self.actors)
        self.actors = merged
        for name, res in self.actors.items():
            res.validate(f"actors.{name}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "StreamConfig":
        """Build from `Config.stream`; unknown keys and bad values raise ConfigError naming the key."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, unknown[0] if unknown else "", f"unknown key; known keys: {sorted(known)}")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in ("actors", "vad", "diarize", "gateway")}
        if "gateway" in data:
            kwargs["gateway"] = _gateway_from(data["gateway"])
        if "actors" in data:
            kwargs["actors"] = _actors_from(data["actors"])
        if "vad" in data:
            kwargs["vad"] = _sub(VADConfig, data["vad"], "vad")
        if "diarize" in data:
            kwargs["diarize"] = _sub(DiarizeConfig, data["diarize"], "diarize")
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - guarded by the key check above
            raise ConfigError(f"stream: {exc}") from None

    def resources(self, actor: str) -> ActorResources:
        if actor not in self.actors:
            raise KeyError(f"unknown actor {actor!r}; known: {list(ACTOR_NAMES)}")
        return self.actors[actor]


def _sub(cls: type, data: Any, key: str) -> Any:
    _check(isinstance(data, Mapping), key, f"expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    _check(not unknown, f"{key}.{unknown[0] if unknown else ''}", f"unknown key; known keys: {sorted(known)}")
    try:
        return cls(**dict(data))
    except ConfigError as exc:
        raise ConfigError(f"stream.{exc}") from None


def _actors_from(data: Any) -> dict[str, ActorResources]:
    _check(isinstance(data, Mapping), "actors", f"expected a mapping of actor name -> resources, got {type(data).__name__}")
    out: dict[str, ActorResources] = {}
    for name, spec in data.items():
        _check(name in ACTOR_NAMES, f"actors.{name}", f"unknown actor; known: {list(ACTOR_NAMES)}")
        out[name] = _sub(ActorResources, spec or {}, f"actors.{name}")
    return out


def _gateway_from(data: Any) -> GatewayConfig:
    """GatewayConfig.from_mapping, its errors naming keys from the top of the profile (stream.gateway.<key>)."""
    _check(isinstance(data, Mapping), "gateway", f"expected a mapping, got {type(data).__name__}")
    try:
        return GatewayConfig.from_mapping(data)
    except ConfigError as exc:
        msg = str(exc)
        if msg.startswith("unknown key "):
            raise ConfigError("unknown key stream." + msg[len("unknown key "):]) from None
        raise ConfigError(f"stream.{msg}") from None
