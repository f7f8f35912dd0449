"""EmoDB (Berlin, German, acted): a cross-corpus, cross-language check of the voice branch, never selected on.

File name SS TTT E V: speaker, text code, emotion letter, version. The seven
letters map onto the MELD classes; boredom has no MELD class and is read as
neutral (a low-arousal, unmarked delivery), which the report states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EMODB_TO_MELD: dict[str, str] = {"W": "anger", "E": "disgust", "A": "fear", "F": "joy", "T": "sadness",
                                 "N": "neutral", "L": "neutral"}  # L = boredom, no MELD class
BOREDOM = "L"


@dataclass(frozen=True)
class EmoDBClip:
    path: Path
    speaker: str
    letter: str

    @property
    def label(self) -> str:
        return EMODB_TO_MELD[self.letter]


def emodb_clips(root: Path) -> list[EmoDBClip]:
    """Every clip under `root` whose name follows the EmoDB scheme; a clip that does not is a ValueError."""
    files = sorted(p for p in Path(root).iterdir() if p.suffix.lower() in (".flac", ".wav"))
    if not files:
        raise FileNotFoundError(f"{root}: no .flac or .wav EmoDB clips")
    out = []
    for p in files:
        stem = p.stem
        if len(stem) < 6 or stem[5] not in EMODB_TO_MELD:
            raise ValueError(f"{p.name}: not an EmoDB name (SS TTT E V, E one of {''.join(EMODB_TO_MELD)})")
        out.append(EmoDBClip(p, stem[:2], stem[5]))
    return out
