"""MELD as users download it: the three CSVs, optionally with the clip folders.

Layout (root = the folder with the CSVs; clips_root = the folder that holds the
clip folders, or their parent one level up, as the official tarballs extract):

    train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
    train_splits/dia{D}_utt{U}.mp4
    dev_splits_complete/dia{D}_utt{U}.mp4
    output_repeated_splits_test/dia{D}_utt{U}.mp4

Known defects of the official release (corrupt train dia125_utt3.mp4, missing
dev dia110_utt7.mp4, minutes-long test clips) and any other bad clip never stop
loading: the utterance keeps its text and label, loses the unreadable media,
and the problem is logged and counted in the dataset's LoadReport.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from magtkd_stream.labels import MELD_LABELS

from magtkd_stream.media import MediaError, MediaSpan, probe
from .types import Dataset, Dialogue, LoadReport, Utterance

logger = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = (
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "Season", "Episode", "StartTime", "EndTime",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
CSV_NAMES: dict[str, str] = {s: f"{s}_sent_emo.csv" for s in ("train", "dev", "test")}
CLIP_FOLDERS: dict[str, str] = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}


def check_splits(splits: Iterable[str], known: Iterable[str], dataset: str) -> tuple[str, ...]:
    """The requested splits as a tuple; none, or an unknown one, is a ValueError naming the known splits."""
    splits, known = tuple(splits), list(known)
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise ValueError(f"unknown {dataset} split(s) {unknown or splits}; expected some of {known}")
    return splits


def read_csv_rows(path: Path, required: Sequence[str], expected: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV; a header lacking required columns is a ValueError.

    UTF-8 is expected (MELD has curly quotes); a file that is not UTF-8 is read as
    Windows-1252, which older MELD copies use, with a warning.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        logger.warning("%s is not UTF-8; reading it as Windows-1252", path)
        text = path.read_text(encoding="cp1252", errors="replace")
    reader = csv.DictReader(text.splitlines(keepends=True))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(
            f"{path}: missing required column(s) {missing}; found {header}; expected columns {list(expected)}"
        )
    reader.fieldnames = header
    rows: list[tuple[int, dict]] = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV near line {reader.line_num}: {exc}") from exc
    return rows


def row_problem(row: dict, required: Sequence[str]) -> str | None:
    """Why a CSV row is malformed, or None: too few or too many fields."""
    if None in row:
        return f"{len(row) - 1 + len(row[None])} fields, more than the header's {len(row) - 1}"
    empty = [c for c in required if row.get(c) is None]
    if empty:
        return f"too few fields (no {empty})"
    return None


def _parse_int(value: str) -> int | None:
    try:
        return int(value.strip())
    except (ValueError, AttributeError):
        return None


def find_clip_folder(clips_root: Path, split: str) -> Path:
    """The clip folder of a split directly under clips_root or one level down."""
    name = CLIP_FOLDERS[split]
    direct = clips_root / name
    if direct.is_dir():
        return direct
    nested = sorted(p for p in clips_root.glob(f"*/{name}") if p.is_dir())
    if nested:
        return nested[0]
    raise FileNotFoundError(
        f"no clip folder {name!r} for split {split!r} under {clips_root} (nor one level down); "
        f"expected folders: {sorted(CLIP_FOLDERS.values())}"
    )


def clip_spans(
    path: Path, what: str, report: LoadReport, max_clip_s: float | None, probe_clips: bool
) -> tuple[MediaSpan | None, MediaSpan | None]:
    """(audio, video) spans of one clip; problems are counted and give None, never raise."""
    if not path.is_file():
        report.warn("missing_clip", f"{what}: {path} does not exist")
        return None, None
    if not probe_clips:
        return MediaSpan(str(path)), MediaSpan(str(path))
    try:
        info = probe(path)
    except MediaError as exc:
        report.warn("unreadable_clip", f"{what}: {exc}")
        return None, None
    if not info.has_audio and not info.has_video:
        report.warn("unreadable_clip", f"{what}: {path} has neither an audio nor a video stream")
        return None, None
    end = None
    if max_clip_s is not None and info.duration is not None and info.duration > max_clip_s:
        report.warn("capped_clip", f"{what}: {path} lasts {info.duration:.1f} s; using its first {max_clip_s:g} s")
        end = float(max_clip_s)
    audio = MediaSpan(str(path), 0.0, end) if info.has_audio else None
    video = MediaSpan(str(path), 0.0, end) if info.has_video else None
    for present, kind in ((info.has_audio, "audio"), (info.has_video, "video")):
        if not present:
            report.warn("missing_stream", f"{what}: {path} has no {kind} stream")
    return audio, video


def _load_split(
    csv_path: Path, split: str, name: str, report: LoadReport,
    clip_dir: Path | None, max_clip_s: float | None, probe_clips: bool,
) -> list[Dialogue]:
    rows = read_csv_rows(csv_path, REQUIRED_COLUMNS, CSV_COLUMNS)
    by_dialogue: dict[int, dict[int, Utterance]] = defaultdict(dict)
    seen_dialogues: set[int] = set()
    for line, row in rows:
        where = f"{csv_path.name} line {line}"
        problem = row_problem(row, REQUIRED_COLUMNS)
        if problem:
            report.warn("malformed_row", f"{where}: {problem}")
            continue
        d, u = _parse_int(row["Dialogue_ID"]), _parse_int(row["Utterance_ID"])
        if d is not None:
            seen_dialogues.add(d)
        if d is None or u is None or d < 0 or u < 0:
            report.warn("malformed_row", f"{where}: Dialogue_ID {row['Dialogue_ID']!r} / Utterance_ID "
                                         f"{row['Utterance_ID']!r} are not non-negative integers")
            continue
        emotion = row["Emotion"].strip().lower()
        if emotion not in MELD_LABELS:
            report.warn("unknown_label", f"{where}: emotion {row['Emotion']!r} not in {list(MELD_LABELS)}")
            continue
        if u in by_dialogue[d]:
            report.warn("malformed_row", f"{where}: duplicate dia{d}_utt{u}; the first one is kept")
            continue
        stem = f"dia{d}_utt{u}"
        audio = video = None
        if clip_dir is not None:
            audio, video = clip_spans(clip_dir / f"{stem}.mp4", f"{split} {stem}", report, max_clip_s, probe_clips)
        by_dialogue[d][u] = Utterance(
            uid=f"{name}/{split}/{stem}", speaker=row["Speaker"].strip(), text=row["Utterance"].strip(),
            label=MELD_LABELS.index(emotion), audio=audio, video=video,
        )
    dialogues: list[Dialogue] = []
    for d in sorted(seen_dialogues):
        utts = by_dialogue.get(d)
        if not utts:
            report.warn("empty_dialogue", f"{csv_path.name}: dialogue {d} has no usable utterance; dropped")
            continue
        dialogues.append(Dialogue(did=f"dia{d}", split=split, source=name,
                                  utterances=[utts[k] for k in sorted(utts)]))
    if not dialogues:
        raise ValueError(f"{csv_path}: no usable rows ({len(rows)} rows read); see the warnings above")
    return dialogues


def load_meld(
    root: str | Path,
    clips_root: str | Path | None = None,
    splits: Iterable[str] = ("train", "dev", "test"),
    max_clip_s: float | None = 30.0,
    probe_clips: bool = True,
    name: str = "meld",
) -> Dataset:
    """Read MELD's CSVs (and clips when clips_root is given) into a Dataset with MELD_LABELS.

    Without clips every utterance is text-only. With clips, each utterance's audio
    and video are the span of its mp4 (capped at max_clip_s; None = no cap);
    probe_clips=False only checks that the file exists (faster on a slow disk).
    """
    root = Path(root)
    splits = check_splits(splits, CSV_NAMES, "MELD")
    if not root.is_dir():
        raise FileNotFoundError(f"MELD root {root} is not a folder; it should hold {list(CSV_NAMES.values())}")
    clips = Path(clips_root) if clips_root is not None else None
    if clips is not None and not clips.is_dir():
        raise FileNotFoundError(f"MELD clips root {clips} is not a folder")
    if max_clip_s is not None and not max_clip_s > 0:
        raise ValueError(f"max_clip_s must be > 0 or None, got {max_clip_s}")
    report = LoadReport(name)
    out: dict[str, list[Dialogue]] = {}
    for split in splits:
        csv_path = root / CSV_NAMES[split]
        if not csv_path.is_file():
            raise FileNotFoundError(f"MELD split {split!r}: {csv_path} not found")
        clip_dir = find_clip_folder(clips, split) if clips is not None else None
        out[split] = _load_split(csv_path, split, name, report, clip_dir, max_clip_s, probe_clips)
        report.count(split, out[split])
    logger.info("loaded %s from %s: %s", name, root, report.summary())
    return Dataset(name=name, labels=MELD_LABELS, splits=out, report=report)
