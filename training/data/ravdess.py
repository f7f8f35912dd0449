"""RAVDESS single-modality sources for the lite checkpoint: speech clips and the paired AU + audio file.

Every clip is a one-utterance dialogue whose speaker is its actor. Splits are by
actor only (speaker-independent evaluation): an actor in two splits is an error.
File names carry the labels: 03-01-EE-II-SS-RR-AA (modality, channel, emotion,
intensity, statement, repetition, actor). The paired feature file keys its rows
by the audio-visual clip id (leading 01 instead of 03).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from magtkd_stream.labels import MELD_LABELS, RAVDESS_CODES, RAVDESS_LABELS, RAVDESS_TO_MELD

from magtkd_stream.media import MediaError, MediaSpan, probe
from .types import Dataset, Dialogue, LoadReport, Utterance

logger = logging.getLogger(__name__)

STATEMENTS: dict[str, str] = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
AU_COLUMNS = slice(0, 35)  # 17 action-unit intensities then 18 presence flags
MFCC_COLUMNS = slice(35, 294)  # MFCC-style block padded with -65.8
PAIRED_WIDTH = 294
AUDIO_EXTENSIONS = (".flac", ".wav")


def _label_space(label_space: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """Label names and RAVDESS emotion name -> index for 'meld' (7, calm -> neutral) or 'ravdess' (8)."""
    if label_space == "meld":
        return MELD_LABELS, {k: MELD_LABELS.index(v) for k, v in RAVDESS_TO_MELD.items()}
    if label_space == "ravdess":
        return RAVDESS_LABELS, {k: i for i, k in enumerate(RAVDESS_LABELS)}
    raise ValueError(f"unknown label_space {label_space!r}; expected 'meld' or 'ravdess'")


def actor_splits(**splits: Iterable[int]) -> dict[int, str]:
    """actor -> split; an actor listed in two splits is a ValueError (speaker independence)."""
    out: dict[int, str] = {}
    for split, actors in splits.items():
        for actor in actors:
            if actor in out:
                raise ValueError(f"actor {actor} is in both {out[actor]!r} and {split!r}; splits must be by actor")
            out[int(actor)] = split
    return out


def parse_name(stem: str) -> tuple[list[str], str | None]:
    """(the 7 fields, problem) of a RAVDESS name; problem is 'malformed_row' or 'unknown_label'."""
    parts = stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() and len(p) == 2 for p in parts):
        return parts, "malformed_row"
    if parts[2] not in RAVDESS_CODES:
        return parts, "unknown_label"
    return parts, None


def _speech_files(root: Path) -> list[Path]:
    folder = root / "speech_16k" if (root / "speech_16k").is_dir() else root
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def _dataset(name: str, labels: tuple[str, ...], out: dict[str, list[Dialogue]], report: LoadReport, source: Path,
             item: str, actors: dict[int, str]) -> Dataset:
    """Count what each split got; a load that kept nothing is an error, not an empty dataset."""
    for split, dialogues in out.items():
        report.count(split, dialogues)
    if not any(out.values()):
        raise ValueError(f"{source}: no usable {item} for actors {sorted(actors)}; see the warnings above")
    logger.info("loaded %s from %s: %s", name, source, report.summary())
    return Dataset(name=name, labels=labels, splits=out, report=report)


def load_ravdess_speech(
    root: str | Path,
    train_actors: Iterable[int] = range(1, 17),
    dev_actors: Iterable[int] = range(17, 21),
    test_actors: Iterable[int] = (),
    label_space: str = "meld",
    with_text: bool = False,
    probe_clips: bool = False,
) -> Dataset:
    """RAVDESS speech clips (root, or root/speech_16k, holds 03-01-EE-II-SS-RR-AA.flac/.wav).

    Text is "" by default: the two fixed statements carry no emotion, and a text
    model would only learn noise from them; with_text=True fills the statement in.
    Clips of actors in no split are left out (counted as held_out).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RAVDESS root {root} is not a folder")
    labels, to_index = _label_space(label_space)
    actors = actor_splits(train=train_actors, dev=dev_actors, test=test_actors)
    files = _speech_files(root)
    if not files:
        raise ValueError(f"no RAVDESS audio files ({'/'.join(AUDIO_EXTENSIONS)}) in {root} or {root / 'speech_16k'}")
    report = LoadReport("ravdess")
    out: dict[str, list[Dialogue]] = {s: [] for s in dict.fromkeys(actors.values())}
    for path in files:
        parts, problem = parse_name(path.stem)
        if problem:
            report.warn(problem, f"{path.name}: not a RAVDESS name 03-01-EE-II-SS-RR-AA with a known "
                                 f"emotion code {sorted(RAVDESS_CODES)}")
            continue
        split = actors.get(int(parts[6]))
        if split is None:
            report.note("held_out")
            continue
        if probe_clips:
            try:
                probe(path)
            except MediaError as exc:
                report.warn("unreadable_clip", str(exc))
                continue
        text = STATEMENTS.get(parts[4], "") if with_text else ""
        utt = Utterance(uid=f"ravdess/{split}/{path.stem}", speaker=f"actor{parts[6]}", text=text,
                        label=to_index[RAVDESS_CODES[parts[2]]], audio=MediaSpan(str(path)))
        out[split].append(Dialogue(did=path.stem, split=split, source="ravdess", utterances=[utt]))
    return _dataset("ravdess", labels, out, report, root, "RAVDESS clip", actors)


def load_ravdess_paired(
    npz_path: str | Path,
    train_actors: Iterable[int] = range(1, 17),
    dev_actors: Iterable[int] = range(17, 21),
    test_actors: Iterable[int] = (),
    label_space: str = "meld",
    speech_root: str | Path | None = None,
) -> Dataset:
    """The paired face-AU + audio-feature file: arrays {"au": (35,), "mfcc": (259,)} per clip.

    With speech_root, each utterance also gets the matching speech clip as audio
    (clip id with a leading 03); a missing one is a counted missing_clip.
    """
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise FileNotFoundError(f"RAVDESS paired feature file {npz_path} not found")
    labels, to_index = _label_space(label_space)
    actors = actor_splits(train=train_actors, dev=dev_actors, test=test_actors)
    with np.load(npz_path, allow_pickle=False) as z:
        missing = [k for k in ("clip_ids", "features") if k not in z.files]
        if missing:
            raise ValueError(f"{npz_path}: missing array(s) {missing}; expected clip_ids (N,) and features (N, 294)")
        clip_ids, features = z["clip_ids"], z["features"]
    if features.ndim != 2 or features.shape[1] != PAIRED_WIDTH or len(clip_ids) != len(features):
        raise ValueError(f"{npz_path}: features {features.shape} / clip_ids {clip_ids.shape}; "
                         f"expected (N, {PAIRED_WIDTH}) and (N,)")
    speech = {p.stem: p for p in _speech_files(Path(speech_root))} if speech_root is not None else None
    report = LoadReport("ravdess_av")
    out: dict[str, list[Dialogue]] = {s: [] for s in dict.fromkeys(actors.values())}
    finite = np.isfinite(features).all(axis=1)
    for i, cid in enumerate(str(c) for c in clip_ids):
        parts, problem = parse_name(cid)
        if problem:
            report.warn(problem, f"row {i}: clip id {cid!r} is not EE-coded 01-01-EE-II-SS-RR-AA")
            continue
        if not finite[i]:
            report.warn("malformed_row", f"row {i} ({cid}): non-finite features")
            continue
        split = actors.get(int(parts[6]))
        if split is None:
            report.note("held_out")
            continue
        audio = None
        if speech is not None:
            stem = "03-" + cid.split("-", 1)[1]
            if stem in speech:
                audio = MediaSpan(str(speech[stem]))
            else:
                report.warn("missing_clip", f"{cid}: no speech file {stem} under {speech_root}")
        row = features[i]
        utt = Utterance(uid=f"ravdess_av/{split}/{cid}", speaker=f"actor{parts[6]}", text="",
                        label=to_index[RAVDESS_CODES[parts[2]]], audio=audio,
                        arrays={"au": row[AU_COLUMNS], "mfcc": row[MFCC_COLUMNS]})
        out[split].append(Dialogue(did=cid, split=split, source="ravdess_av", utterances=[utt]))
    return _dataset("ravdess_av", labels, out, report, npz_path, "row", actors)
