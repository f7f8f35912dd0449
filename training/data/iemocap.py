"""IEMOCAP from one CSV that indexes its sentence .wav files and dialogue .avi files.

IEMOCAP ships sentence-level .wav files and dialogue-level .avi files with the
sentence times in text files; users flatten that into this CSV once (UTF-8,
header row, one row per sentence):

    column        required  meaning
    dialogue_id   yes       e.g. Ses01F_impro01
    utterance_id  yes       e.g. Ses01F_impro01_F000 (unique in the file)
    session       yes       1..5
    speaker       yes       e.g. F / M, or Ses01F
    text          yes       transcript (may be empty)
    label         yes       happy|hap, sad, neutral|neu, angry|ang, excited|exc, frustrated|fru
                            (IEMOCAP_LABELS); the other IEMOCAP codes (xxx, oth, sur, fea, dis)
                            are left out of the 6-class task and counted as excluded_label
    wav_path      no        the sentence .wav; relative to the CSV's folder, or absolute
    avi_path      no        the dialogue .avi; same
    start, end    no        seconds of the sentence within the dialogue .avi (needed for video)
    split         no        train / dev / test; when the column exists it decides the split

Without a split column the standard rule applies: test = session 5; dev = 12
dialogues of sessions 1-4 (drawn with a fixed seed, round-robin over the
sessions so each contributes equally); train = the rest of sessions 1-4.
Within a dialogue sentences are ordered by start time when every one has one,
else kept in file order.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from magtkd_stream.labels import IEMOCAP_LABELS

from magtkd_stream.media import MediaError, MediaSpan, probe
from .meld import check_splits, read_csv_rows, row_problem
from .types import Dataset, Dialogue, LoadReport, Utterance

logger = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = (
    "dialogue_id", "utterance_id", "session", "speaker", "text", "label",
    "wav_path", "avi_path", "start", "end", "split",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("dialogue_id", "utterance_id", "session", "speaker", "text", "label")
LABEL_ALIASES: dict[str, str] = {
    "hap": "happy", "sad": "sad", "neu": "neutral", "ang": "angry", "exc": "excited", "fru": "frustrated",
    **{name: name for name in IEMOCAP_LABELS},
}
EXCLUDED_LABELS: frozenset[str] = frozenset(
    {"xxx", "oth", "other", "sur", "surprised", "fea", "fear", "dis", "disgust", ""}
)
SPLITS: tuple[str, ...] = ("train", "dev", "test")


def _float(value: str | None) -> float | None:
    try:
        x = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def standard_split(
    dialogue_sessions: dict[str, int], dev_dialogues: int = 12, seed: int = 0,
    test_sessions: Iterable[int] = (5,),
) -> dict[str, str]:
    """dialogue id -> split by the standard rule (test sessions; dev drawn round-robin from the others)."""
    test = set(test_sessions)
    pools: dict[int, list[str]] = defaultdict(list)
    for did, session in sorted(dialogue_sessions.items()):
        if session not in test:
            pools[session].append(did)
    rng = random.Random(seed)
    for session in sorted(pools):
        rng.shuffle(pools[session])
    dev: set[str] = set()
    sessions = sorted(pools)
    while len(dev) < dev_dialogues and any(pools[s] for s in sessions):
        for s in sessions:
            if pools[s] and len(dev) < dev_dialogues:
                dev.add(pools[s].pop())
    return {
        did: "test" if session in test else "dev" if did in dev else "train"
        for did, session in dialogue_sessions.items()
    }


class _MediaChecker:
    """Paths relative to the CSV's folder; existence (and optionally header) checks once per file.

    A dialogue .avi serves many rows, so each file is checked once and each row's
    loss of it is counted.
    """

    def __init__(self, base: Path, report: LoadReport, check: bool, probe_clips: bool) -> None:
        self.base, self.report, self.check, self.probe_clips = base, report, check, probe_clips
        self.cache: dict[Path, str | None] = {}

    def resolve(self, value: str, what: str) -> str | None:
        path = Path(value)
        path = path if path.is_absolute() else self.base / path
        if not self.check:
            return str(path)
        if path not in self.cache:
            problem = None
            if not path.is_file():
                problem = "missing_clip"
            elif self.probe_clips:
                try:
                    probe(path)
                except MediaError:
                    problem = "unreadable_clip"
            self.cache[path] = problem
        problem = self.cache[path]
        if problem is not None:
            self.report.warn(problem, f"{what}: {path}")
            return None
        return str(path)


def load_iemocap(
    csv_path: str | Path,
    splits: Iterable[str] = SPLITS,
    dev_dialogues: int = 12,
    seed: int = 0,
    check_media: bool = True,
    probe_clips: bool = False,
) -> Dataset:
    """Read the IEMOCAP CSV (layout in this module's docstring) into a Dataset with IEMOCAP_LABELS.

    check_media: a wav/avi path that does not exist gives audio/video None with a
    counted missing_clip warning; probe_clips also opens each file's header once.
    """
    csv_path = Path(csv_path)
    splits = check_splits(splits, SPLITS, "IEMOCAP")
    if not csv_path.is_file():
        raise FileNotFoundError(f"IEMOCAP CSV {csv_path} not found (layout: see docs/DATASETS.md)")
    report = LoadReport("iemocap")
    rows = read_csv_rows(csv_path, REQUIRED_COLUMNS, CSV_COLUMNS)
    media = _MediaChecker(csv_path.parent, report, check_media, probe_clips)
    dialogues: dict[str, list[tuple[float | None, Utterance]]] = defaultdict(list)
    sessions: dict[str, int] = {}
    given_split: dict[str, str] = {}
    seen: set[str] = set()
    seen_dialogues: dict[str, None] = {}  # insertion-ordered set
    for line, row in rows:
        where = f"{csv_path.name} line {line}"
        problem = row_problem(row, REQUIRED_COLUMNS)
        did, uid = (row.get("dialogue_id") or "").strip(), (row.get("utterance_id") or "").strip()
        if not problem and (not did or not uid):
            problem = "empty dialogue_id or utterance_id"
        session = _float(row.get("session")) if not problem else None
        if not problem and (session is None or session != int(session) or not 1 <= session <= 5):
            problem = f"session {row['session']!r} is not an integer 1..5"
        if not problem and uid in seen:
            problem = f"duplicate utterance_id {uid!r}; the first one is kept"
        split = (row.get("split") or "").strip().lower()
        if not problem and split and split not in SPLITS:
            problem = f"split {row['split']!r} is not one of {list(SPLITS)}"
        if not problem and did in sessions and sessions[did] != int(session):
            problem = f"dialogue {did} appears with sessions {sessions[did]} and {int(session)}"
        if not problem and split and given_split.get(did, split) != split:
            problem = f"dialogue {did} appears in splits {given_split[did]!r} and {split!r}"
        if did:
            seen_dialogues.setdefault(did, None)
        if problem:
            report.warn("malformed_row", f"{where}: {problem}")
            continue
        raw = row["label"].strip().lower()
        if raw in EXCLUDED_LABELS:
            report.note("excluded_label")
            continue
        if raw not in LABEL_ALIASES:
            report.warn("unknown_label", f"{where}: label {row['label']!r} not in {list(IEMOCAP_LABELS)} "
                                         f"or their codes {sorted(k for k in LABEL_ALIASES if len(k) == 3)}")
            continue
        seen.add(uid)
        sessions[did] = int(session)
        if split:
            given_split[did] = split
        start, end = _float(row.get("start")), _float(row.get("end"))
        audio = video = None
        wav, avi = (row.get("wav_path") or "").strip(), (row.get("avi_path") or "").strip()
        if wav:
            path = media.resolve(wav, f"{uid} wav")
            audio = MediaSpan(path) if path else None
        if avi:
            if start is None or end is None or start < 0 or end <= start:
                report.warn("malformed_row", f"{where}: avi_path given but start/end "
                                             f"({row.get('start')!r}, {row.get('end')!r}) are not a valid span")
            else:
                path = media.resolve(avi, f"{uid} avi")
                video = MediaSpan(path, start, end) if path else None
        utt = Utterance(uid=f"iemocap/{uid}", speaker=row["speaker"].strip(), text=row["text"].strip(),
                        label=IEMOCAP_LABELS.index(LABEL_ALIASES[raw]), audio=audio, video=video)
        dialogues[did].append((start, utt))
    if report.skipped["excluded_label"]:
        logger.info("iemocap: %d sentences with labels outside the 6 classes left out",
                    report.skipped["excluded_label"])
    for did in seen_dialogues:
        if did not in dialogues:
            report.warn("empty_dialogue", f"{csv_path.name}: dialogue {did} has no usable sentence; dropped")
    if not dialogues:
        raise ValueError(f"{csv_path}: no usable rows ({len(rows)} rows read); see the warnings above")
    assign = standard_split(sessions, dev_dialogues, seed)
    assign.update(given_split)
    out: dict[str, list[Dialogue]] = {s: [] for s in splits}
    for did in sorted(dialogues):
        split = assign[did]
        if split not in out:
            continue
        items = dialogues[did]
        if all(start is not None for start, _ in items):
            items = sorted(items, key=lambda item: item[0])
        for _, utt in items:
            utt.uid = f"iemocap/{split}/{utt.uid.split('/', 1)[1]}"
        out[split].append(Dialogue(did=did, split=split, source="iemocap", utterances=[u for _, u in items]))
    for split in splits:
        report.count(split, out[split])
    logger.info("loaded iemocap from %s: %s", csv_path, report.summary())
    return Dataset(name="iemocap", labels=IEMOCAP_LABELS, splits=out, report=report)
