"""From dataset utterances to encoder batches, skipping what is absent or cannot be read.

Stage 1, feature extraction and evaluation all need the same thing: for a list
of utterances of one split, the raw input of one modality (a prompt with its
dialogue context, a waveform, frames, a face crop, or a feature row), batched
through the encoder's own `collate`. An utterance without that modality is
left out before anything is decoded; a clip that fails to decode is skipped,
logged and counted — a damaged file never ends a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from magtkd_stream.config import Config
from magtkd_stream.encoders.base import AudioInput, Encoder, TextInput, VideoInput
from magtkd_stream.media import MediaError, load_audio, load_frames
from training.data.types import Dataset, Dialogue, LoadReport, Utterance

logger = logging.getLogger(__name__)

FACE_KEY = "face"  # FER2013-style ready face crops in Utterance.arrays


def served_clip(wave: np.ndarray, cfg: Config) -> np.ndarray:
    """A one-utterance clip cut by the service's own VAD settings, so training encodes what is served.

    Pooling Whisper states over a whole clip (its leading and trailing silence
    included) gives other vectors than the VAD-cut segment the service encodes.
    A clip in which the VAD hears no speech comes back empty: the encoder then
    reports the audio absent, as the service would emit no utterance at all.
    """
    from faster_whisper.vad import get_vad_model  # loaded once per process (lru_cache)

    from magtkd_stream.streaming.vad import served_audio

    return served_audio(wave, cfg.stream.vad, get_vad_model())


@dataclass(frozen=True)
class UttRef:
    """One utterance and where it sits in its dialogue (its context is what precedes it)."""

    dialogue: Dialogue
    pos: int

    @property
    def utt(self) -> Utterance:
        return self.dialogue.utterances[self.pos]

    def context(self) -> list[tuple[str, str]]:
        return [(u.speaker, u.text) for u in self.dialogue.utterances[: self.pos]]


def prompt_length(ref: UttRef, turns: int) -> int:
    """Characters of an utterance's text and its last `turns` context turns: a proxy for its prompt's tokens."""
    context = ref.context()[-turns:] if turns > 0 else []
    return len(ref.utt.text or "") + sum(len(t) for _, t in context)


def split_refs(dataset: Dataset, split: str) -> list[UttRef]:
    """Every utterance of a split in dialogue order."""
    if split not in dataset.splits:
        raise KeyError(f"dataset {dataset.name!r} has no split {split!r}; it has {sorted(dataset.splits)}")
    return [UttRef(d, i) for d in dataset.splits[split] for i in range(len(d.utterances))]


def has_input(utt: Utterance, modality: str, encoder: Encoder) -> bool:
    """Whether the utterance carries anything this encoder can read (no decoding)."""
    key = getattr(encoder, "array_key", None)
    if key is not None:
        return key in utt.arrays
    if modality == "text":
        return bool((utt.text or "").strip())
    if modality == "audio":
        return utt.audio is not None
    if modality == "video":
        return utt.video is not None or FACE_KEY in utt.arrays
    raise ValueError(f"unknown modality {modality!r}; expected text, audio or video")


def make_input(ref: UttRef, modality: str, encoder: Encoder, cfg: Config) -> Any:
    """The encoder input of one utterance; raises MediaError when its clip cannot be decoded."""
    utt = ref.utt
    key = getattr(encoder, "array_key", None)
    if key is not None:
        return utt.arrays[key]
    if modality == "text":
        return TextInput(speaker=utt.speaker, text=utt.text, context=ref.context())
    if modality == "audio":
        assert utt.audio is not None
        wave = load_audio(utt.audio, sr=cfg.encoders.audio.sample_rate)
        return AudioInput(served_clip(wave, cfg) if cfg.train.vad_audio else wave)
    if modality == "video":
        if utt.video is not None:
            return VideoInput(load_frames(utt.video, num_frames=cfg.encoders.video.num_frames))
        return VideoInput([np.asarray(utt.arrays[FACE_KEY])])
    raise ValueError(f"unknown modality {modality!r}; expected text, audio or video")


@dataclass
class Batch:
    """Collated inputs of the rows that loaded; `rows` index the caller's list, `failed` those that did not."""

    rows: list[int]
    tensors: Optional[dict[str, Any]]
    failed: list[tuple[int, str]]


InputTransform = Callable[[Any], Any]  # rewrites one encoder input (e.g. a TextInput in ASR style)


class _Items(torch.utils.data.Dataset):
    """Loads inputs inside DataLoader workers, so decoding overlaps with the network."""

    def __init__(self, refs: Sequence[UttRef], modality: str, encoder: Encoder, cfg: Config,
                 transform: Optional[InputTransform] = None) -> None:
        self.refs, self.modality, self.encoder, self.cfg = refs, modality, encoder, cfg
        self.transform = transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[int, Any, Optional[str]]:
        try:
            item = make_input(self.refs[i], self.modality, self.encoder, self.cfg)
        except MediaError as exc:
            return i, None, str(exc)
        return i, (self.transform(item) if self.transform is not None else item), None


class _Collate:
    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def __call__(self, items: list[tuple[int, Any, Optional[str]]]) -> Batch:
        good = [(i, x) for i, x, err in items if err is None]
        failed = [(i, err) for i, _, err in items if err is not None]
        tensors = self.encoder.collate([x for _, x in good]) if good else None
        return Batch(rows=[i for i, _ in good], tensors=tensors, failed=failed)


def iter_batches(
    refs: Sequence[UttRef],
    rows: Sequence[int],
    modality: str,
    encoder: Encoder,
    cfg: Config,
    batch_size: int,
    num_workers: int = 0,
    transform: Optional[InputTransform] = None,
) -> Iterator[Batch]:
    """Batches of the given rows of `refs` in the given order; Batch.rows index `refs`.

    transform: applied to each input after it is made (training-time augmentation).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    subset = [refs[i] for i in rows]
    loader = torch.utils.data.DataLoader(
        _Items(subset, modality, encoder, cfg, transform), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=_Collate(encoder), persistent_workers=False,
    )
    for batch in loader:
        batch.rows = [int(rows[i]) for i in batch.rows]
        batch.failed = [(int(rows[i]), err) for i, err in batch.failed]
        yield batch


def to_device(tensors: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


class InputProblems:
    """Why utterances were left out of one modality's split; each clip is logged and counted once."""

    def __init__(self, name: str) -> None:
        self.report = LoadReport(name)
        self.failed_uids: set[str] = set()
        self.absent_uids: set[str] = set()

    def failed(self, ref: UttRef, error: str) -> None:
        """A clip that could not be decoded (MediaError)."""
        uid = ref.utt.uid
        if uid not in self.failed_uids:
            self.failed_uids.add(uid)
            self.report.warn("unreadable_clip", f"{uid}: {error}")

    def absent(self, n: int = 1) -> None:
        """Utterances without the modality at all (no media, no array, empty transcript)."""
        self.report.skipped["absent"] += n

    def encoder_absent(self, ref: UttRef) -> None:
        """The encoder found nothing in the input (silence, no face)."""
        if ref.utt.uid not in self.absent_uids:
            self.absent_uids.add(ref.utt.uid)
            self.report.skipped["absent"] += 1

    def excluded(self, ref: UttRef) -> bool:
        return ref.utt.uid in self.failed_uids or ref.utt.uid in self.absent_uids

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.report.skipped.items() if v}
