"""Label sets of the datasets the recognizer is trained on, and mappings between them.

One label set per checkpoint: the checkpoint stores its names, and every source
dataset is mapped onto that set here, in one place, so that training and the
streaming service never disagree about what index 3 means.
"""

from __future__ import annotations

from typing import Mapping, Sequence

MELD_LABELS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
IEMOCAP_LABELS: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "excited", "frustrated")

LABEL_SETS: dict[str, tuple[str, ...]] = {"meld": MELD_LABELS, "iemocap": IEMOCAP_LABELS}

# RAVDESS emotion code (file name field 3) -> RAVDESS emotion name.
RAVDESS_CODES: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
RAVDESS_LABELS: tuple[str, ...] = tuple(RAVDESS_CODES.values())

# RAVDESS (8) -> MELD (7): calm has no MELD class and folds into neutral.
RAVDESS_TO_MELD: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "joy",
    "sad": "sadness",
    "angry": "anger",
    "fearful": "fear",
    "disgust": "disgust",
    "surprised": "surprise",
}

# FER2013 label order as stored in the .npz files; maps 1:1 onto MELD.
FER2013_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER2013_TO_MELD: dict[str, str] = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "joy",
    "sad": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}


def label_set(name: str) -> tuple[str, ...]:
    """Return the label names of a known label set ('meld' or 'iemocap')."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; known: {sorted(LABEL_SETS)}") from None


def index_map(source: Sequence[str], mapping: Mapping[str, str], target: Sequence[str]) -> list[int]:
    """Index of each source label in the target set, after mapping names.

    Raises ValueError naming the label that has no place in the target set.
    """
    out: list[int] = []
    for name in source:
        mapped = mapping.get(name)
        if mapped is None or mapped not in target:
            raise ValueError(f"label {name!r} has no mapping into {list(target)}")
        out.append(list(target).index(mapped))
    return out


def ravdess_label_from_filename(name: str) -> str:
    """RAVDESS emotion name from a file name like 03-01-05-01-02-01-12.flac."""
    stem = name.rsplit("/", 1)[-1].split(".", 1)[0]
    parts = stem.split("-")
    if len(parts) != 7:
        raise ValueError(f"not a RAVDESS file name (want 7 dash-separated fields): {name!r}")
    code = parts[2]
    if code not in RAVDESS_CODES:
        raise ValueError(f"unknown RAVDESS emotion code {code!r} in {name!r}; known: {sorted(RAVDESS_CODES)}")
    return RAVDESS_CODES[code]


# One colour (RGB) per emotion label, shared by the desktop overlay and the run report; others get grey.
LABEL_COLOURS: dict[str, tuple[int, int, int]] = {
    "anger": (230, 40, 40), "angry": (230, 40, 40), "frustrated": (200, 90, 40),
    "disgust": (60, 160, 60), "fear": (150, 60, 150),
    "joy": (255, 200, 0), "happy": (255, 200, 0), "excited": (255, 150, 0),
    "neutral": (170, 170, 170), "sadness": (40, 120, 200), "sad": (40, 120, 200), "surprise": (0, 200, 230),
}
OTHER_COLOUR: tuple[int, int, int] = (150, 150, 150)
