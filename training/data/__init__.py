"""Training datasets, all read into one in-memory form (see types.py and docs/DATASETS.md).

MELD (CSVs, optionally clips), IEMOCAP (a CSV index of its wav/avi files),
RAVDESS speech and paired features, FER2013 faces, and a synthetic MELD-layout
generator for tests all produce a `Dataset` of `Dialogue`s of `Utterance`s.
"""

from .fer import load_fer2013
from .iemocap import load_iemocap
from .meld import load_meld
from .ravdess import load_ravdess_paired, load_ravdess_speech
from .types import Dataset, Dialogue, LoadReport, Utterance

__all__ = [
    "Dataset", "Dialogue", "LoadReport", "Utterance",
    "load_meld", "load_iemocap", "load_ravdess_speech", "load_ravdess_paired", "load_fer2013",
    "make_synthetic_meld",
]


def __getattr__(name: str):
    # The generator is imported on first use so `python -m training.data.synthetic` runs cleanly.
    if name == "make_synthetic_meld":
        from .synthetic import make_synthetic_meld

        return make_synthetic_meld
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
