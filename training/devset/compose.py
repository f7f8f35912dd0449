"""Synthetic multimodal conversations from real data, with per-utterance cue labels.

Why: MELD's own clips are not available, so nothing measures the product end to
end on utterances whose emotion is known to sit in a given modality. Each
conversation here mixes RAVDESS actors (the voice carries the emotion, the words
are a fixed neutral sentence) and espeak-ng voices reading MELD lines (the words
carry it, the voice is flat), each speaker shown with a face identity whose
photo may carry the emotion too. Every utterance records which modalities carry
its label (`cues`), so a scorer can tell what each branch contributes.

Two steps: `plan` (pure: data index + seed -> conversations with their sources,
nothing decoded or synthesized, cheap enough for thousands of training
conversations) and `render` (training/devset/compose_render.py: audio, pictures, mp4).

Split rule (splits never mix):
  dev   = RAVDESS actors 17-20, FER2013 val, muxspace dev identities, MELD dev lines
  train = RAVDESS actors 01-16, FER2013 train, muxspace train identities, MELD train lines
  A muxspace identity is dev when int(sha256(identity)[:8], 16) % 100 < 25, else train.
espeak-ng voices are synthetic and shared by both splits.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from magtkd_stream.labels import FER2013_LABELS, FER2013_TO_MELD, MELD_LABELS, RAVDESS_CODES, RAVDESS_TO_MELD

log = logging.getLogger(__name__)

SPLITS = ("train", "dev")
SPLIT_CODE = {"train": 1, "dev": 2}  # mixed into the seed so both splits of one seed differ
DEV_ACTORS = tuple(range(17, 21))
TRAIN_ACTORS = tuple(range(1, 17))
DEV_IDENTITY_PERCENT = 25
FER_FILES = {"train": "fer2013_train.npz", "dev": "fer2013_val.npz"}
MELD_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv"}
MUXSPACE_TO_MELD = {"neutral": "neutral", "happiness": "joy", "surprise": "surprise", "sadness": "sadness",
                    "anger": "anger", "disgust": "disgust", "fear": "fear"}  # contempt: dropped
RAVDESS_SENTENCES = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
MIN_WORDS, MAX_WORDS = 3, 25
EMOTIONS = tuple(e for e in MELD_LABELS if e != "neutral")
CUE_TYPES = ("voice", "face", "words", "voice+face", "words+face", "none")
CUES_BY_KIND = {"ravdess": ("voice", "voice+face", "face", "none"), "espeak": ("words", "words+face", "face", "none")}
P_THREE_SPEAKERS = 0.25
P_ALTERNATE = 0.5
P_ABSENT = 0.4  # of utterances whose face carries no emotion (about 1/2 of all): ~20% of utterances show no face
LEAD_S, TAIL_S = 0.6, 0.8
GAP_S = (0.6, 1.2)


@dataclass(frozen=True)
class EspeakVoice:
    """A flat synthetic voice: espeak-ng voice+variant, pitch (0-99) and rate (words per minute)."""

    name: str
    voice: str
    pitch: int
    rate: int


VOICES: tuple[EspeakVoice, ...] = (
    EspeakVoice("Milo", "en-us+m3", 40, 155), EspeakVoice("Iris", "en-gb+f2", 58, 160),
    EspeakVoice("Nora", "en-us+f4", 66, 170), EspeakVoice("Owen", "en-gb+m4", 34, 150),
    EspeakVoice("Pia", "en-us+f3", 60, 165), EspeakVoice("Rex", "en-gb+m2", 46, 160),
)


def identity_split(identity: str) -> str:
    """The split of a muxspace identity: a stable hash, so the rule never depends on file order."""
    h = int(hashlib.sha256(identity.encode("utf-8")).hexdigest()[:8], 16)
    return "dev" if h % 100 < DEV_IDENTITY_PERCENT else "train"


def actors_of(split: str) -> tuple[int, ...]:
    return DEV_ACTORS if split == "dev" else TRAIN_ACTORS


def spoken_text(text: str) -> str:
    """MELD's typography as plain ASCII, so espeak-ng and the transcript compare cleanly."""
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2026", "..."),
                 ("\u2014", ", "), ("\u2013", ", ")):
        text = text.replace(a, b)
    return re.sub(r"\s+", " ", text).strip()


# ------------------------------------------------------------------ the data index of one split
@dataclass(frozen=True)
class MeldLine:
    dialogue: int
    utterance: int
    emotion: str
    text: str


@dataclass
class Sources:
    """What one split may draw from: file names and labels only (nothing decoded)."""

    split: str
    root: Path
    ravdess: dict[int, dict[str, list[str]]]  # actor -> MELD emotion -> clip file names
    meld: dict[str, list[MeldLine]]  # MELD emotion -> lines
    faces: dict[str, dict[str, list[str]]]  # identity -> MELD emotion -> image file names
    fer: dict[str, list[int]]  # MELD emotion -> FER2013 indices in FER_FILES[split]

    @classmethod
    def load(cls, root: Path, split: str) -> "Sources":
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return cls(split, Path(root), _ravdess(root, split), _meld(root, split), _muxspace(root, split),
                   _fer(root, split))


def _ravdess(root: Path, split: str) -> dict[int, dict[str, list[str]]]:
    folder = Path(root) / "ravdess" / "speech_16k"
    files = sorted(folder.glob("03-01-*.flac"))
    if not files:
        raise FileNotFoundError(f"no RAVDESS clips (03-01-*.flac) in {folder}")
    out: dict[int, dict[str, list[str]]] = {}
    wanted = set(actors_of(split))
    for f in files:
        parts = f.stem.split("-")
        actor = int(parts[6])
        if actor in wanted:
            emotion = RAVDESS_TO_MELD[RAVDESS_CODES[parts[2]]]
            out.setdefault(actor, {}).setdefault(emotion, []).append(f.name)
    return out


def _meld(root: Path, split: str) -> dict[str, list[MeldLine]]:
    path = Path(root) / "meld" / MELD_FILES[split]
    out: dict[str, list[MeldLine]] = {e: [] for e in MELD_LABELS}
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            text = spoken_text(row["Utterance"])
            if not MIN_WORDS <= len(text.split()) <= MAX_WORDS or re.search(r"[\[\]()]", text):
                continue
            if row["Emotion"] in out:
                out[row["Emotion"]].append(MeldLine(int(row["Dialogue_ID"]), int(row["Utterance_ID"]),
                                                    row["Emotion"], text))
    return out


def _muxspace(root: Path, split: str) -> dict[str, dict[str, list[str]]]:
    path = Path(root) / "faces_muxspace" / "labels.csv"
    out: dict[str, dict[str, list[str]]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            emotion = MUXSPACE_TO_MELD.get(row["emotion"].strip().lower())
            if emotion is None or identity_split(row["identity"]) != split:
                continue
            out.setdefault(row["identity"], {}).setdefault(emotion, []).append(row["image"])
    return {k: {e: sorted(v) for e, v in sorted(d.items())} for k, d in sorted(out.items())}


def _fer(root: Path, split: str) -> dict[str, list[int]]:
    with np.load(Path(root) / "fer2013" / FER_FILES[split], allow_pickle=False) as z:
        labels = z["labels"]
        names = [str(x) for x in z["label_names"]] if "label_names" in z.files else list(FER2013_LABELS)
    out: dict[str, list[int]] = {e: [] for e in MELD_LABELS}
    for k, name in enumerate(names):
        out[FER2013_TO_MELD[name]].extend(int(i) for i in np.flatnonzero(labels == k))
    return {e: sorted(v) for e, v in out.items()}


# ------------------------------------------------------------------ the plan
@dataclass
class SpeakerPlan:
    name: str
    kind: str  # "ravdess" | "espeak"
    identity: str  # muxspace identity of the face
    actor: Optional[int] = None
    espeak_voice: Optional[str] = None
    pitch: Optional[int] = None
    rate: Optional[int] = None


@dataclass
class UtterancePlan:
    index: int
    speaker: str
    emotion: str
    cue_type: str
    cues: list[str]
    text: str
    gap_before: float  # seconds of silence before the speech
    speech: dict[str, Any]
    face: dict[str, Any]


@dataclass
class ConversationPlan:
    id: str
    split: str
    seed: int
    speakers: list[SpeakerPlan]
    utterances: list[UtterancePlan] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Decks:
    """Draw without replacement from shuffled decks, reshuffled when empty: reuse spreads evenly, no repeat early."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.decks: dict[Any, list[Any]] = {}

    def draw(self, key: Any, items: Sequence[Any]) -> Any:
        deck = self.decks.get(key)
        if not deck:
            deck = [items[int(i)] for i in self.rng.permutation(len(items))]
            self.decks[key] = deck
        return deck.pop()


def _cues_of(cue_type: str) -> list[str]:
    return [] if cue_type == "none" else cue_type.split("+")


class Planner:
    """Sequential, seeded plan state: conversation k depends only on the seed and conversations before it."""

    def __init__(self, sources: Sources, seed: int) -> None:
        self.src = sources
        self.seed = seed
        self.rng = np.random.default_rng([seed, SPLIT_CODE[sources.split]])
        self.decks = _Decks(self.rng)
        self.cue_count: Counter = Counter()
        self.emotion_count: Counter = Counter()
        self.pair_count: Counter = Counter()  # (cue type, emotion): emotions balanced within every cue type
        identities = [k for k, d in sources.faces.items() if "neutral" in d]
        varied = [k for k in identities if len(sources.faces[k]) > 1]
        self.identities = varied or identities
        if not self.identities:
            raise ValueError(f"no muxspace identity of the {sources.split} split has a neutral photo")
        self.photos_by_emotion = {e: [(k, img) for k, d in sources.faces.items() for img in d.get(e, [])]
                                  for e in MELD_LABELS}

    def _least(self, options: Sequence[str], score: Callable[[str], tuple[int, ...]]) -> str:
        """The option with the lowest score (the most under-used so far); ties broken at random."""
        return min(options, key=lambda o: (*score(o), float(self.rng.random())))

    def _speakers(self) -> list[SpeakerPlan]:
        n = 3 if self.rng.random() < P_THREE_SPEAKERS else 2
        kinds = ["ravdess", "espeak"] + ([str(self.rng.choice(["ravdess", "espeak"]))] if n == 3 else [])
        kinds = [kinds[int(i)] for i in self.rng.permutation(n)]
        actors = [int(a) for a in self.rng.choice(sorted(self.src.ravdess), size=kinds.count("ravdess"), replace=False)]
        voices = [VOICES[int(i)] for i in self.rng.choice(len(VOICES), size=kinds.count("espeak"), replace=False)]
        faces = [self.identities[int(i)] for i in self.rng.choice(len(self.identities), size=n, replace=False)]
        out = []
        for kind, identity in zip(kinds, faces):
            if kind == "ravdess":
                a = actors.pop()
                out.append(SpeakerPlan(f"Actor{a:02d}", kind, identity, actor=a))
            else:
                v = voices.pop()
                out.append(SpeakerPlan(v.name, kind, identity, espeak_voice=v.voice, pitch=v.pitch, rate=v.rate))
        return out

    def _turns(self, n_speakers: int, n: int) -> list[int]:
        if self.rng.random() < P_ALTERNATE:
            order = [int(i) for i in self.rng.permutation(n_speakers)]
            return [order[k % n_speakers] for k in range(n)]
        turns = list(range(n_speakers)) + [int(self.rng.integers(n_speakers)) for _ in range(n - n_speakers)]
        return [turns[int(i)] for i in self.rng.permutation(n)]

    def _speech(self, sp: SpeakerPlan, emotion: str) -> tuple[dict[str, Any], str]:
        if sp.kind == "ravdess":
            clips = self.src.ravdess[sp.actor][emotion]  # type: ignore[index]
            name = self.decks.draw(("ravdess", sp.actor, emotion), clips)
            parts = name[:-5].split("-")
            return ({"kind": "ravdess", "file": name, "actor": sp.actor,
                     "ravdess_emotion": RAVDESS_CODES[parts[2]], "intensity": "strong" if parts[3] == "02" else "normal"},
                    RAVDESS_SENTENCES[parts[4]])
        line: MeldLine = self.decks.draw(("meld", emotion), self.src.meld[emotion])
        return ({"kind": "meld", "split": self.src.split, "dialogue": line.dialogue, "utterance": line.utterance,
                 "espeak_voice": sp.espeak_voice, "pitch": sp.pitch, "rate": sp.rate}, line.text)

    def _face(self, identity: str, emotion: str) -> dict[str, Any]:
        """A photo showing `emotion`: the identity's own, else another identity's of the split, else FER."""
        own = self.src.faces[identity].get(emotion)
        if own:
            return {"kind": "muxspace", "image": self.decks.draw(("face", identity, emotion), own),
                    "identity": identity, "emotion": emotion}
        others = self.photos_by_emotion[emotion]
        if others:
            who, img = self.decks.draw(("faces", emotion), others)
            return {"kind": "muxspace", "image": img, "identity": who, "emotion": emotion}
        idx = self.decks.draw(("fer", emotion), self.src.fer[emotion])
        return {"kind": "fer", "file": FER_FILES[self.src.split], "index": int(idx), "emotion": emotion}

    def conversation(self, number: int) -> ConversationPlan:
        speakers = self._speakers()
        n = int(self.rng.integers(6, 11))
        conv = ConversationPlan(f"conv-{number:03d}", self.src.split, self.seed, speakers)
        for k, who in enumerate(self._turns(len(speakers), n)):
            sp = speakers[who]
            cue_type = self._least(CUES_BY_KIND[sp.kind], lambda c: (self.cue_count[c],))
            cues = _cues_of(cue_type)
            emotion = "neutral" if cue_type == "none" else self._least(
                EMOTIONS, lambda e: (self.pair_count[cue_type, e], self.emotion_count[e]))
            self.cue_count[cue_type] += 1
            self.pair_count[cue_type, emotion] += 1
            self.emotion_count[emotion] += 1
            speech, text = self._speech(sp, emotion if ("voice" in cues or "words" in cues) else "neutral")
            if "face" in cues:
                face = self._face(sp.identity, emotion)
            elif self.rng.random() < P_ABSENT:
                face = {"kind": "absent"}
            else:
                face = self._face(sp.identity, "neutral")
            gap = LEAD_S if k == 0 else round(float(self.rng.uniform(*GAP_S)), 2)
            conv.utterances.append(UtterancePlan(k, sp.name, emotion, cue_type, cues, text, gap, speech, face))
        return conv


def plan(sources: Sources, seed: int, count: int) -> list[ConversationPlan]:
    """`count` conversations, a deterministic function of (split, seed, count); a prefix of a longer plan."""
    planner = Planner(sources, seed)
    return [planner.conversation(k) for k in range(count)]


def plan_counts(plans: Iterable[ConversationPlan]) -> dict[str, Any]:
    """How the plan is balanced: cue types, emotions, faces, speaker kinds."""
    utts = [u for p in plans for u in p.utterances]
    return {
        "utterances": len(utts),
        "cue_types": {c: sum(u.cue_type == c for u in utts) for c in CUE_TYPES},
        "emotions": {e: sum(u.emotion == e for u in utts) for e in MELD_LABELS},
        "face": dict(Counter(u.face["kind"] for u in utts)),
        "speech": dict(Counter(u.speech["kind"] for u in utts)),
        "neutral_share": round(sum(u.emotion == "neutral" for u in utts) / max(len(utts), 1), 3),
        "absent_share": round(sum(u.face["kind"] == "absent" for u in utts) / max(len(utts), 1), 3),
    }


SPLIT_RULE = {
    "dev": "RAVDESS actors 17-20, FER2013 val, muxspace dev identities, MELD dev lines",
    "train": "RAVDESS actors 01-16, FER2013 train, muxspace train identities, MELD train lines",
    "muxspace_identity": f"dev when int(sha256(identity utf-8).hexdigest()[:8], 16) % 100 < {DEV_IDENTITY_PERCENT}",
    "contempt": "dropped",
    "espeak_voices": "synthetic, shared by both splits",
}


def compose(root: Path, split: str, out: Path, count: int, seed: int, plan_only: bool = False) -> dict[str, Any]:
    """Plan (and unless plan_only render) `count` conversations into `out`; returns the manifest."""
    sources = Sources.load(root, split)
    plans = plan(sources, seed, count)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps([p.to_dict() for p in plans], indent=1, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    manifest: dict[str, Any] = {"made_by": "training/devset/compose.py", "split": split, "seed": seed, "count": count,
                                "data": str(root), "plan_only": plan_only, "split_rule": SPLIT_RULE,
                                "labels": list(MELD_LABELS), "counts": plan_counts(plans), "conversations": []}
    if plan_only:
        manifest["conversations"] = [{"id": p.id, "utterances": len(p.utterances)} for p in plans]
    else:
        from training.devset.compose_render import Renderer

        renderer = Renderer(sources)
        for p in plans:
            t0 = time.perf_counter()
            doc = renderer.render(p, out)
            took = time.perf_counter() - t0
            log.info("%s: %d utterances, %.1f s of media, rendered in %.1f s", p.id, len(p.utterances),
                     doc["duration"], took)
            manifest["conversations"].append({"id": p.id, "media": doc["media"], "script": f"{p.id}.json",
                                              "utterances": len(p.utterances), "duration": doc["duration"],
                                              "render_s": round(took, 2)})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
