"""Speech recognition whose one Whisper encoder pass also yields the utterance's audio vector.

Whisper's encoder is the expensive half of recognition, and its states are a
good utterance-level audio representation. `WhisperASR.transcribe_batch` runs
the encoder once per batch, decodes transcripts from those states, and pools
the same states into an audio vector (mean and std over the utterance's own
frames, never the 30 s padding), so the lite profile needs no second audio
model. `ScriptedASR` returns transcripts given in advance (tests, tiny profile).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from magtkd_stream.config import ASRConfig
from magtkd_stream.resources import require, resolve_model
from magtkd_stream.names import SAMPLE_RATE

log = logging.getLogger(__name__)

WINDOW_SECONDS = 30  # the window Whisper was trained on; the longest utterance it takes
ENCODER_FRAMES = 1500  # encoder states per 30 s window (50 per second)
FRAMES_PER_SECOND = ENCODER_FRAMES / WINDOW_SECONDS
MEL_FRAMES = 3000  # log-mel frames per 30 s window (100 per second)
DEFAULT_SILENCE_RMS = 1e-3  # about -60 dBFS: quieter input is treated as silence
MIN_SAMPLES = 1600  # 100 ms: shorter input carries no words and is not encoded
MAX_TOKENS = 448  # Whisper's decoder context
TOKENS_PER_SECOND = 12  # generous: English speech runs at about 4 tokens per second
ACCEPTED = "a mono (1-D) float32 numpy array sampled at 16 kHz with values in [-1, 1]"


@dataclass
class ASRResult:
    """Transcript of one utterance and, where computed, its pooled Whisper audio vector."""

    text: str
    audio_vector: Optional[np.ndarray] = field(repr=False)  # (2 * d_model,) float32; None when not encoded
    present: bool  # True when speech was recognized (non-empty transcript)
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage for the batch
    language: Optional[str] = None
    avg_logprob: Optional[float] = None
    no_speech_prob: Optional[float] = None


def validate_waveform(wave: Any, name: str = "waveform") -> np.ndarray:
    """Check one utterance's samples; raise ValueError naming what is accepted."""
    if not isinstance(wave, np.ndarray):
        raise ValueError(f"{name}: got {type(wave).__name__}; expected {ACCEPTED}")
    if wave.dtype != np.float32:
        hint = " (divide int16 PCM by 32768)" if np.issubdtype(wave.dtype, np.integer) else ""
        raise ValueError(f"{name}: dtype {wave.dtype}{hint}; expected {ACCEPTED}")
    if wave.ndim != 1:
        raise ValueError(f"{name}: shape {wave.shape} (stereo or batched?); expected {ACCEPTED}")
    if wave.size and not np.all(np.isfinite(wave)):
        raise ValueError(f"{name}: contains NaN or infinite samples; expected {ACCEPTED}")
    if wave.size and float(np.max(np.abs(wave))) > 1.0 + 1e-4:
        raise ValueError(f"{name}: peak {float(np.max(np.abs(wave))):.3g} is outside [-1, 1]; expected {ACCEPTED}")
    return wave


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0


def is_audible(wave: np.ndarray, silence_rms: float = DEFAULT_SILENCE_RMS) -> bool:
    """Long enough and loud enough to be worth an encoder pass."""
    return wave.size >= MIN_SAMPLES and rms(wave) >= silence_rms


def encoder_frames(n_samples: int) -> int:
    """Encoder states covering `n_samples` of audio: ceil(seconds * 50), clipped to [1, 1500]."""
    return int(min(ENCODER_FRAMES, max(1, math.ceil(n_samples / SAMPLE_RATE * FRAMES_PER_SECOND))))


def truncate(wave: np.ndarray, max_seconds: float, what: str = "utterance") -> np.ndarray:
    """Cut to `max_seconds` (logged): longer input is kept usable rather than refused."""
    limit = int(max_seconds * SAMPLE_RATE)
    if wave.size > limit:
        log.warning("%s of %.1f s cut to its first %.1f s", what, wave.size / SAMPLE_RATE, max_seconds)
        return wave[:limit]
    return wave


def window_mel_frames(sizes: Sequence[int], window_s: float = WINDOW_SECONDS) -> int:
    """Log-mel frames of the encoder window for a batch: `window_s` when every item fits, else 30 s.

    The encoder's cost grows with its window, not with the speech in it, so a
    short window (e.g. 10 s) makes short utterances several times cheaper to
    encode; whatever does not fit falls back to Whisper's own 30 s window.
    """
    if not 0 < window_s <= WINDOW_SECONDS:
        raise ValueError(f"window_s must be in (0, {WINDOW_SECONDS}] seconds, got {window_s}")
    frames = int(round(window_s * MEL_FRAMES / WINDOW_SECONDS))
    frames -= frames % 2  # the encoder's stride-2 convolution halves the frames
    if any(n > frames * SAMPLE_RATE // 100 for n in sizes):
        return MEL_FRAMES
    return frames


def log_mel_batch(extractor: Any, waveforms: Sequence[np.ndarray], mel_frames: int = MEL_FRAMES) -> np.ndarray:
    """Log-mel features (B, n_mels, mel_frames) float32, each utterance padded to the window."""
    out = []
    for wave in waveforms:
        mel = extractor(wave)[:, :mel_frames]  # (n_mels, frames)
        if mel.shape[1] < mel_frames:
            mel = np.pad(mel, ((0, 0), (0, mel_frames - mel.shape[1])))
        out.append(mel.astype(np.float32, copy=False))
    return np.ascontiguousarray(np.stack(out))


def pool_encoder_states(states: np.ndarray, n_frames: Sequence[int]) -> np.ndarray:
    """Concatenate mean and std over each item's first n_frames states: (B, T, D) -> (B, 2D).

    Only the utterance's own frames count: the padded tail of the window would
    otherwise make short and long utterances of the same voice look different.
    """
    states = np.asarray(states)
    if states.ndim != 3:
        raise ValueError(f"states: expected (batch, frames, dim), got shape {states.shape}")
    if len(n_frames) != states.shape[0]:
        raise ValueError(f"n_frames: {len(n_frames)} counts for a batch of {states.shape[0]}")
    out = np.empty((states.shape[0], 2 * states.shape[2]), dtype=np.float32)
    for i, n in enumerate(n_frames):
        n = int(n)
        if not 1 <= n <= states.shape[1]:
            raise ValueError(f"n_frames[{i}] = {n}; expected 1..{states.shape[1]}")
        own = states[i, :n].astype(np.float64)
        out[i, : states.shape[2]] = own.mean(axis=0)
        out[i, states.shape[2] :] = own.std(axis=0)
    return out


def _select_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _select_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "default":
        return compute_type
    return "float16" if device == "cuda" else "int8"


class WhisperASR:
    """faster-whisper model used below its transcribe() API: one batched encoder pass serves all.

    `no_speech_threshold` and `logprob_threshold` drop hallucinated text on
    non-speech (Whisper tends to write "Thank you." over noise), as faster-whisper does.
    """

    def __init__(
        self,
        cfg: ASRConfig,
        cpu_threads: int = 0,
        silence_rms: float = DEFAULT_SILENCE_RMS,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
    ) -> None:
        if cfg.kind != "faster_whisper":
            raise ValueError(f"WhisperASR needs encoders.asr.kind 'faster_whisper', got {cfg.kind!r}")
        fw = require("faster_whisper", "faster-whisper", why="speech recognition")
        self.cfg = cfg
        self.device = _select_device(cfg.device)
        self.compute_type = _select_compute_type(cfg.compute_type, self.device)
        self.silence_rms = silence_rms
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        self.model_path = str(resolve_model(cfg.model))
        t0 = time.perf_counter()
        self._fw = fw.WhisperModel(
            self.model_path, device=self.device, compute_type=self.compute_type, cpu_threads=cpu_threads
        )
        self.model = self._fw.model  # ctranslate2.models.Whisper
        self.extractor = self._fw.feature_extractor
        self.multilingual = bool(self.model.is_multilingual)
        self.n_mels = int(self.model.n_mels)
        self._tokenizers: dict[str, Any] = {}
        self.d_model = self._probe_width()
        log.info(
            "Whisper %s loaded on %s/%s in %.2f s (d_model %d)",
            cfg.model, self.device, self.compute_type, time.perf_counter() - t0, self.d_model,
        )

    @property
    def dim(self) -> int:
        """Width of the pooled audio vector."""
        return 2 * self.d_model

    def _probe_width(self) -> int:
        import json
        from pathlib import Path

        cfg_file = Path(self.model_path) / "config.json"
        if cfg_file.is_file():
            width = json.loads(cfg_file.read_text()).get("d_model")
            if isinstance(width, int):
                return width
        states = self.encode(np.zeros((1, self.n_mels, MEL_FRAMES), dtype=np.float32))
        return int(states.shape[2])

    def features(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Log-mel features (B, n_mels, window) for already validated, truncated waveforms.

        The window is `cfg.window_seconds` when the whole batch fits in it, else 30 s.
        """
        frames = window_mel_frames([w.size for w in waveforms], self.cfg.window_seconds)
        return log_mel_batch(self.extractor, waveforms, frames)

    def _encode_storage(self, features: np.ndarray) -> Any:
        import ctranslate2

        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
        # to_cpu: the states are pooled in numpy, and generate() accepts host storage too.
        return self.model.encode(storage, to_cpu=True)

    def encode(self, features: np.ndarray) -> np.ndarray:
        """One encoder pass over a batch of features -> states (B, mel_frames / 2, d_model) float32."""
        return np.array(self._encode_storage(features), dtype=np.float32)

    def audio_vectors(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled encoder states (B, 2*d_model) for audible, validated waveforms (no decoding)."""
        states = self.encode(self.features(waveforms))
        return pool_encoder_states(states, [encoder_frames(w.size) for w in waveforms])

    def _tokenizer(self, language: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self._fw.hf_tokenizer, self.multilingual, task="transcribe", language=language
            )
        return self._tokenizers[language]

    def _prompt(self, storage: Any, batch: int) -> tuple[list[list[int]], list[str]]:
        if not self.multilingual:
            languages = ["en"] * batch
        elif self.cfg.language:
            languages = [self.cfg.language] * batch
        else:
            languages = [ranked[0][0].strip("<|>") for ranked in self.model.detect_language(storage)]
        prompts = []
        for lang in languages:
            tok = self._tokenizer(lang)
            prompts.append(tok.sot_sequence + [tok.no_timestamps])
        return prompts, languages

    @staticmethod
    def _max_tokens(sizes: Sequence[int]) -> int:
        """Token budget for the batch: far above speech rate, yet a repetition loop stops early."""
        seconds = max(sizes) / SAMPLE_RATE
        return int(min(MAX_TOKENS, 16 + math.ceil(seconds * TOKENS_PER_SECOND)))

    def transcribe_batch(self, waveforms: Sequence[np.ndarray]) -> list[ASRResult]:
        """Transcripts and audio vectors for a batch of utterances, one encoder pass in all.

        Silent, empty or shorter-than-100-ms input is not encoded: its result has
        text "", audio_vector None and present False.
        """
        waves = [validate_waveform(w, f"waveforms[{i}]") for i, w in enumerate(waveforms)]
        waves = [truncate(w, WINDOW_SECONDS) for w in waves]
        active = [i for i, w in enumerate(waves) if is_audible(w, self.silence_rms)]
        results = [ASRResult(text="", audio_vector=None, present=False) for _ in waves]
        if not active:
            return results
        t0 = time.perf_counter()
        feats = self.features([waves[i] for i in active])
        t1 = time.perf_counter()
        storage = self._encode_storage(feats)
        states = np.array(storage, dtype=np.float32)
        t2 = time.perf_counter()
        prompts, languages = self._prompt(storage, len(active))
        decoded = self.model.generate(
            storage,
            prompts,
            beam_size=self.cfg.beam_size,
            max_length=self._max_tokens([waves[i].size for i in active]),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
        )
        t3 = time.perf_counter()
        vectors = pool_encoder_states(states, [encoder_frames(waves[i].size) for i in active])
        t4 = time.perf_counter()
        timings = {
            "features_ms": (t1 - t0) * 1e3,
            "encode_ms": (t2 - t1) * 1e3,
            "decode_ms": (t3 - t2) * 1e3,
            "pool_ms": (t4 - t3) * 1e3,
            "batch": float(len(active)),
        }
        for j, i in enumerate(active):
            res = decoded[j]
            text = self._tokenizer(languages[j]).decode(res.sequences_ids[0]).strip()
            avg_logprob = float(res.scores[0]) if res.scores else None
            no_speech = float(res.no_speech_prob)
            if (
                no_speech > self.no_speech_threshold
                and avg_logprob is not None
                and avg_logprob < self.logprob_threshold
            ):
                text = ""
            results[i] = ASRResult(
                text=text,
                audio_vector=vectors[j],
                present=bool(text),
                timings=dict(timings),
                language=languages[j],
                avg_logprob=avg_logprob,
                no_speech_prob=no_speech,
            )
        return results

    def transcribe(self, waveform: np.ndarray) -> ASRResult:
        return self.transcribe_batch([waveform])[0]


Script = Union[Sequence[str], Callable[[int, np.ndarray], str]]

_DEFAULT_SCRIPT = (
    "I can't believe you did that!",
    "Well, that is fine by me.",
    "Oh no, that is terrible news.",
    "Wow, I did not expect that at all.",
)


class ScriptedASR:
    """Returns transcripts given in advance; same interface as WhisperASR, no audio vectors.

    `script` is a list used in order (cycled when `cycle`, otherwise exhausting it
    is an error) or a callable (call_index, waveform) -> text. Silent input still
    yields "" so that tests of the pipeline see the same absent-speech behaviour.
    """

    def __init__(
        self, script: Optional[Script] = None, cycle: bool = True, silence_rms: float = DEFAULT_SILENCE_RMS
    ) -> None:
        self.script: Script = _DEFAULT_SCRIPT if script is None else script
        if not callable(self.script) and len(self.script) == 0:
            raise ValueError("ScriptedASR: script is empty; give a list of transcripts or a callable")
        self.cycle = cycle
        self.silence_rms = silence_rms
        self.calls = 0
        self.dim = 0  # no audio vector

    def _next(self, wave: np.ndarray) -> str:
        index = self.calls
        self.calls += 1
        if callable(self.script):
            return str(self.script(index, wave))
        if index >= len(self.script) and not self.cycle:
            raise RuntimeError(f"ScriptedASR: script of {len(self.script)} transcripts exhausted")
        return self.script[index % len(self.script)]

    def transcribe_batch(self, waveforms: Sequence[np.ndarray]) -> list[ASRResult]:
        out = []
        for i, w in enumerate(waveforms):
            wave = validate_waveform(w, f"waveforms[{i}]")
            text = self._next(wave).strip() if is_audible(wave, self.silence_rms) else ""
            out.append(ASRResult(text=text, audio_vector=None, present=bool(text), timings={}))
        return out

    def transcribe(self, waveform: np.ndarray) -> ASRResult:
        return self.transcribe_batch([waveform])[0]


def build_asr(cfg: ASRConfig, script: Optional[Script] = None, cpu_threads: int = 0) -> Union[WhisperASR, ScriptedASR]:
    """The recognizer `cfg.kind` names; `script` feeds a scripted one."""
    if cfg.kind == "scripted":
        return ScriptedASR(script)
    if cfg.kind == "faster_whisper":
        return WhisperASR(cfg, cpu_threads=cpu_threads)
    raise ValueError(f"encoders.asr.kind: unknown {cfg.kind!r}; expected 'faster_whisper' or 'scripted'")
