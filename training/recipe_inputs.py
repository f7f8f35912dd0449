"""What a recipe run starts from: the recipe file (with a profile swap and --set overrides) and data limits.

A recipe is a configuration file that starts from a profile (`base: lite`) and
adds its `train:` section and whatever else differs.
`--profile-override tiny` swaps in another profile's encoders, magt and
feature_dim while keeping the recipe's trainable_layers and magt.window, so a
full recipe runs its own training path with tiny models in seconds. Limits cap
how many dialogues of each source and split a run uses, by a seeded random
choice, for quick runs on subsets of real data.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

import numpy as np

from magtkd_stream.config import CONFIG_DIR, Config, ConfigError, apply_override, config_from_dict, read_config_tree
from training.data.types import Dataset

logger = logging.getLogger(__name__)
T = TypeVar("T")


# ----------------------------------------------------------------------- recipe files
def recipe_path(ref: str | Path) -> Path:
    """A YAML path, or a name in configs/ ("train_smoke", "configs/train_smoke.yaml" from anywhere)."""
    p = Path(ref)
    if p.is_file():
        return p
    if p.parent in (Path("."), Path("configs")):
        for candidate in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
            if candidate.is_file():
                return candidate
    known = sorted(x.name for x in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"recipe {str(ref)!r} not found; give a YAML path or one of {known}")


def merge_profile(recipe: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """The recipe with the profile's profile name, feature_dim, encoders and magt.

    Kept from the recipe: every encoder's trainable_layers (whether the encoder is
    fine-tuned decides the training path) and magt.window (the context trained with).
    """
    out = dict(recipe)
    for key in ("profile", "feature_dim", "checkpoint"):
        if key in profile:
            out[key] = profile[key]
    encoders = {k: dict(v or {}) for k, v in (profile.get("encoders") or {}).items()}
    for m, section in (recipe.get("encoders") or {}).items():
        if isinstance(section, dict) and "trainable_layers" in section:
            encoders.setdefault(m, {})["trainable_layers"] = section["trainable_layers"]
    out["encoders"] = encoders
    magt = dict(profile.get("magt") or {})
    if "window" in (recipe.get("magt") or {}):
        magt["window"] = recipe["magt"]["window"]
    out["magt"] = magt
    return out


def load_recipe(ref: str | Path, overrides: Sequence[str] = (), profile_override: Optional[str] = None,
                seed: Optional[int] = None) -> Config:
    """A recipe file (+ optional profile swap) + --set overrides + --seed, validated as a Config."""
    path = recipe_path(ref)
    data = read_config_tree(path)
    if profile_override:
        data = merge_profile(data, read_config_tree(recipe_path(profile_override)))
    for item in overrides:
        apply_override(data, item)
    if seed is not None:
        data["seed"] = int(seed)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None


# ----------------------------------------------------------------------- subsets
@dataclass
class Limits:
    """At most N dialogues per split: everywhere (`per_split`) or for one source / source:split.

    One-utterance sources (RAVDESS, FER2013) hold one utterance per dialogue, so
    there N is a number of utterances.
    """

    per_split: Optional[int] = None
    specific: dict[tuple[str, Optional[str]], int] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: Sequence[str], per_split: Optional[int] = None) -> "Limits":
        """Items "SOURCE=N" or "SOURCE:SPLIT=N", e.g. "fer2013:train=5000"; a bad item is a ValueError."""
        if per_split is not None and per_split < 1:
            raise ValueError(f"the limit per split must be >= 1, got {per_split}")
        specific: dict[tuple[str, Optional[str]], int] = {}
        for item in items:
            key, sep, value = item.partition("=")
            source, _, split = key.strip().partition(":")
            try:
                n = int(value)
            except ValueError:
                n = 0
            if not sep or not source or n < 1:
                raise ValueError(f"limit {item!r}: expected SOURCE=N or SOURCE:SPLIT=N with N >= 1, "
                                 "e.g. meld:train=200 or fer2013=3000")
            specific[(source, split or None)] = n
        return cls(per_split, specific)

    def of(self, source: str, split: str) -> Optional[int]:
        for key in ((source, split), (source, None)):
            if key in self.specific:
                return self.specific[key]
        return self.per_split

    def to_dict(self) -> dict[str, Any]:
        return {"per_split": self.per_split,
                "specific": {f"{s}:{p}" if p else s: n for (s, p), n in sorted(self.specific.items(),
                                                                              key=lambda kv: str(kv[0]))}}


def pick(items: Sequence[T], n: Optional[int], seed: int, key: str) -> list[T]:
    """At most n items: a random choice seeded by (seed, key), in their original order."""
    if n is None or len(items) <= n:
        return list(items)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False).tolist())]


def subsample(dataset: Dataset, limits: Limits, seed: int) -> Dataset:
    """The dataset with at most limits.of(name, split) dialogues per split (a seeded random choice, order kept)."""
    out: dict[str, list] = {}
    for split, dialogues in dataset.splits.items():
        n = limits.of(dataset.name, split)
        out[split] = pick(dialogues, n, seed, f"{dataset.name}/{split}")
        if len(out[split]) < len(dialogues):
            logger.info("%s %s: using %d of %d dialogues (limit)", dataset.name, split, n, len(dialogues))
    return Dataset(name=dataset.name, labels=dataset.labels, splits=out, report=dataset.report)


def dataset_counts(dataset: Dataset) -> dict[str, dict[str, int]]:
    return {s: {"dialogues": len(d), "utterances": dataset.num_utterances(s)} for s, d in dataset.splits.items()}
