"""RAVDESS held-out-actor scores of the lite audio branch (frozen Whisper vectors + a trained head).

The lite run selects its audio head on actors 17-20, so its dev score is not a
held-out score. Here the head is retrained on the same frozen vectors with a
three-way split by actor: fit on 01-14, pick the epoch on 15-16, and score
once on 17-20, which never take part in any choice. Both label spaces are
scored: RAVDESS's own 8 emotions, and the 7 MELD classes the lite checkpoint
uses (calm folds into neutral).

The Whisper vectors are the lite run's cached ones (training.stage1.cache,
keyed by encoder configuration and utterance ids), so the lite run's RAVDESS
split (01-16 train, 17-20 dev) is rebuilt here only to find the cache entries;
a missing entry is computed and stored the same way.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from magtkd_stream.config import Config
from magtkd_stream.encoders.base import ModalityHead
from magtkd_stream.labels import MELD_LABELS, RAVDESS_LABELS
from training.metrics import compute_metrics

logger = logging.getLogger(__name__)

FIT_ACTORS: tuple[int, ...] = tuple(range(1, 15))
SELECT_ACTORS: tuple[int, ...] = (15, 16)
TEST_ACTORS: tuple[int, ...] = tuple(range(17, 21))
LABEL_SPACES: dict[str, tuple[str, ...]] = {"ravdess": RAVDESS_LABELS, "meld": MELD_LABELS}
# The lite recipe's RAVDESS split: the cache entries are keyed by its utterance ids.
LITE_SPLITS: dict[str, tuple[int, ...]] = {"train": tuple(range(1, 17)), "dev": tuple(range(17, 21))}
METRICS_NAME = "ravdess_audio"


@dataclass
class ClipVectors:
    """One row per RAVDESS speech clip: backbone vector, actor, and its label in each label space."""

    vectors: torch.Tensor  # (N, D) float
    actors: np.ndarray  # (N,) int
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # label space -> (N,) int
    uids: list[str] = field(default_factory=list)
    copies: Optional[np.ndarray] = None  # (N,) int: which augmented copy a row is (None: clean clips)


@dataclass
class HeadSettings:
    """Head training: AdamW over full epochs, the best epoch by selection-actor weighted F1."""

    feature_dim: int = 128
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    epochs: int = 20
    grad_clip: float = 10.0

    @classmethod
    def from_config(cls, cfg: Config) -> "HeadSettings":
        s = cfg.train.stage1
        return cls(feature_dim=cfg.feature_dim, lr=s.lr, weight_decay=s.weight_decay, batch_size=s.batch_size,
                   epochs=s.epochs, grad_clip=s.grad_clip)


def split_by_actor(actors: np.ndarray, fit: Sequence[int] = FIT_ACTORS, select: Sequence[int] = SELECT_ACTORS,
                   test: Sequence[int] = TEST_ACTORS) -> dict[str, np.ndarray]:
    """Row indices of the fit / select / test actors; an actor in two groups is a ValueError."""
    groups = {"fit": set(fit), "select": set(select), "test": set(test)}
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = groups[a] & groups[b]
            if both:
                raise ValueError(f"actors {sorted(both)} are in both {a!r} and {b!r}; the groups must be disjoint")
    out = {k: np.flatnonzero(np.isin(actors, sorted(v))) for k, v in groups.items()}
    empty = [k for k, v in out.items() if v.size == 0]
    if empty:
        raise ValueError(f"no clips for the {empty} actors (actors present: {sorted(set(actors.tolist()))})")
    return out


def _predict(head: ModalityHead, x: torch.Tensor) -> np.ndarray:
    head.eval()
    with torch.no_grad():
        return head(x)[1].argmax(1).numpy()


def train_head(x_fit: torch.Tensor, y_fit: np.ndarray, x_sel: torch.Tensor, y_sel: np.ndarray, num_classes: int,
               seed: int, settings: HeadSettings) -> tuple[ModalityHead, dict[str, Any]]:
    """A head trained on the fit rows; the returned weights are those of the best epoch on the select rows."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = ModalityHead(x_fit.shape[1], settings.feature_dim, num_classes, settings.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    y = torch.as_tensor(y_fit, dtype=torch.long)
    names = [str(i) for i in range(num_classes)]
    best: Optional[dict[str, Any]] = None
    best_state = None
    for epoch in range(1, settings.epochs + 1):
        head.train()
        for idx in torch.randperm(len(y), generator=gen).split(settings.batch_size):
            loss = F.cross_entropy(head(x_fit[idx])[1], y[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), settings.grad_clip)
            opt.step()
        m = compute_metrics(y_sel, _predict(head, x_sel), names)
        if best is None or m["weighted_f1"] > best["select_weighted_f1"]:
            best = {"epoch": epoch, "select_weighted_f1": m["weighted_f1"], "select_accuracy": m["accuracy"]}
            best_state = copy.deepcopy(head.state_dict())
    assert best is not None and best_state is not None
    head.load_state_dict(best_state)
    return head, best


def _mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def evaluate_held_out(data: ClipVectors, seeds: Sequence[int] = (0, 1, 2),
                      settings: Optional[HeadSettings] = None) -> dict[str, Any]:
    """Per label space and seed: train on fit actors, select on select actors, score test actors once."""
    settings = settings or HeadSettings()
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    rows = split_by_actor(data.actors)
    x = data.vectors.float()
    report: dict[str, Any] = {
        "actors": {"fit": list(FIT_ACTORS), "select": list(SELECT_ACTORS), "test": list(TEST_ACTORS)},
        "clips": {k: int(v.size) for k, v in rows.items()},
        "settings": settings.__dict__.copy(), "seeds": list(seeds), "label_spaces": {},
    }
    for space, y in data.labels.items():
        names = list(LABEL_SPACES[space])
        runs = []
        for seed in seeds:
            head, chosen = train_head(x[rows["fit"]], y[rows["fit"]], x[rows["select"]], y[rows["select"]],
                                      len(names), seed, settings)
            m = compute_metrics(y[rows["test"]], _predict(head, x[rows["test"]]), names)
            runs.append({"seed": seed, **chosen, "test_accuracy": m["accuracy"],
                         "test_weighted_f1": m["weighted_f1"], "test_macro_f1": m["macro_f1"]})
            logger.info("%s seed %d: epoch %d, test acc %.4f wF1 %.4f", space, seed, chosen["epoch"],
                        m["accuracy"], m["weighted_f1"])
        report["label_spaces"][space] = {
            "classes": names, "runs": runs,
            **{k: _mean_std([r[k] for r in runs]) for k in ("test_accuracy", "test_weighted_f1", "test_macro_f1")},
        }
    return report


FOLDS: tuple[tuple[int, ...], ...] = tuple(tuple(range(a, a + 4)) for a in range(1, 21, 4))  # 01-04 ... 17-20


def normalize_actors(x: torch.Tensor, actors: np.ndarray, prior_rows: np.ndarray, weight: float,
                     seed: int, prior_x: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Every actor's clips normalised as one speaker of a session (clips in a seeded random order).

    The prior mean comes from `prior_rows` of `prior_x` (default x) only (the
    actors a head fits on), so no statistic of a scored actor reaches the prior.
    `actors` may be any session key (an augmented copy is a session of its own).
    """
    from magtkd_stream.model.speaker_norm import SpeakerNormalizer, normalize_sequence

    prior = SpeakerNormalizer((x if prior_x is None else prior_x)[prior_rows].mean(0).numpy(), weight)
    out = x.clone()
    rng = np.random.default_rng(seed)
    for a in np.unique(actors):
        rows = np.flatnonzero(actors == a)
        rows = rows[rng.permutation(rows.size)]
        out[rows] = torch.from_numpy(normalize_sequence(prior, x[rows].numpy(), [str(a)] * rows.size))
    return out


def _fit_rows(x: torch.Tensor, y: np.ndarray, rows: np.ndarray, aug: Optional[ClipVectors], space: str,
              fit: Sequence[int], speaker_norm: float, fold: int) -> tuple[torch.Tensor, np.ndarray]:
    """The fit rows, plus the augmented copies of the fit actors' clips (each copy its own session)."""
    if aug is None:
        return x[rows], y[rows]
    keep = np.flatnonzero(np.isin(aug.actors, list(fit)))
    xa = aug.vectors.float()[keep]
    if speaker_norm > 0:
        assert aug.copies is not None
        sessions = aug.actors[keep] * 1000 + aug.copies[keep]
        xa = normalize_actors(xa, sessions, rows, speaker_norm, fold, prior_x=x)
    return torch.cat([x[rows], xa]), np.concatenate([y[rows], aug.labels[space][keep]])


def evaluate_folds(data: ClipVectors, seeds: Sequence[int] = (0,), settings: Optional[HeadSettings] = None,
                   folds: Sequence[Sequence[int]] = FOLDS, speaker_norm: float = 0.0,
                   augmented: Optional[ClipVectors] = None) -> dict[str, Any]:
    """Leave-actors-out cross-validation: each fold's actors are scored once by a head that never met them.

    Fold k is the test group; the first two actors of fold k+1 pick the epoch;
    the other actors fit. A single 4-actor dev says little about voices in
    general: five folds cover all 20 actors. speaker_norm > 0: vectors are first
    normalised per actor (normalize_actors, prior from the fold's fit actors).
    augmented: vectors of augmented copies of the clips; those of the fit actors join the fit rows (the
    select and test actors are always scored on their clean clips).
    """
    settings = settings or HeadSettings()
    raw = data.vectors.float()
    out: dict[str, Any] = {"folds": [list(f) for f in folds], "seeds": list(seeds), "speaker_norm": speaker_norm,
                           "augmented_rows": 0 if augmented is None else int(augmented.actors.size),
                           "label_spaces": {}}
    for space, y in data.labels.items():
        names = list(LABEL_SPACES[space])
        per_fold = []
        for k, test in enumerate(folds):
            select = tuple(folds[(k + 1) % len(folds)][:2])
            fit = tuple(a for a in sorted(set(data.actors.tolist())) if a not in test and a not in select)
            rows = split_by_actor(data.actors, fit, select, test)
            x = normalize_actors(raw, data.actors, rows["fit"], speaker_norm, k) if speaker_norm > 0 else raw
            x_fit, y_fit = _fit_rows(x, y, rows["fit"], augmented, space, fit, speaker_norm, k)
            scores = []
            for seed in seeds:
                head, _ = train_head(x_fit, y_fit, x[rows["select"]], y[rows["select"]], len(names), seed, settings)
                m = compute_metrics(y[rows["test"]], _predict(head, x[rows["test"]]), names)
                scores.append((m["accuracy"], m["weighted_f1"], m["macro_f1"]))
            acc, wf1, mf1 = (float(np.mean([s[i] for s in scores])) for i in range(3))
            per_fold.append({"test_actors": list(test), "select_actors": list(select), "clips": int(rows["test"].size),
                             "accuracy": acc, "weighted_f1": wf1, "macro_f1": mf1})
            logger.info("%s fold %d (actors %s): acc %.4f wF1 %.4f", space, k + 1, list(test), acc, wf1)
        out["label_spaces"][space] = {
            "classes": names, "folds": per_fold,
            **{k: _mean_std([f[k] for f in per_fold]) for k in ("accuracy", "weighted_f1", "macro_f1")},
        }
    return out


def _lite_refs(ravdess_root: Path, cfg: Config) -> tuple[Any, dict[str, tuple[list[Any], dict[str, dict]]]]:
    """The frozen audio encoder, and per lite split its labelled clips with audio and their label in each space."""
    from training.data import load_ravdess_speech
    from training.stage1.inputs import has_input, split_refs
    from training.stage1.state import build_seeded_encoder

    sets = {space: load_ravdess_speech(ravdess_root, train_actors=LITE_SPLITS["train"],
                                       dev_actors=LITE_SPLITS["dev"], label_space=space, with_text=True)
            for space in LABEL_SPACES}
    encoder = build_seeded_encoder("audio", cfg)
    encoder.set_trainable_layers(0)
    out = {}
    for split in LITE_SPLITS:
        refs = [r for r in split_refs(sets["meld"], split) if r.utt.label is not None
                and has_input(r.utt, "audio", encoder)]
        by_uid = {space: {u.uid: u.label for d in ds.splits[split] for u in d.utterances}
                  for space, ds in sets.items()}
        out[split] = (refs, by_uid)
    return encoder, out


class _Rows:
    """Collects the encoded rows of several (split, copy) passes into one ClipVectors."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.actors: list[int] = []
        self.uids: list[str] = []
        self.copies: list[int] = []
        self.labels: dict[str, list[int]] = {s: [] for s in LABEL_SPACES}

    def add(self, refs: Sequence[Any], by_uid: dict[str, dict], enc: Any, copy: int = 0) -> int:
        """The rows of `enc` that have a vector; returns how many were left out."""
        keep = enc.ok.nonzero().flatten().tolist()
        self.parts.append(enc.vectors[keep])
        for i in keep:
            utt = refs[i].utt
            self.uids.append(utt.uid)
            self.copies.append(copy)
            self.actors.append(int(utt.speaker.removeprefix("actor")))
            for space in LABEL_SPACES:
                self.labels[space].append(int(by_uid[space][utt.uid]))
        return len(refs) - len(keep)

    def result(self, with_copies: bool) -> ClipVectors:
        return ClipVectors(vectors=torch.cat(self.parts), actors=np.asarray(self.actors),
                           labels={s: np.asarray(v) for s, v in self.labels.items()}, uids=self.uids,
                           copies=np.asarray(self.copies) if with_copies else None)


def load_clip_vectors(ravdess_root: Path, cfg: Config, cache_dir: Optional[Path]) -> ClipVectors:
    """Whisper vectors of every labelled RAVDESS speech clip, read from the lite run's cache when it has them."""
    from training.stage1.cache import cached_backbone
    from training.stage1.inputs import InputProblems

    encoder, splits = _lite_refs(ravdess_root, cfg)
    rows = _Rows()
    for split, (refs, by_uid) in splits.items():
        problems = InputProblems(f"ravdess-audio/{split}")
        enc = cached_backbone(encoder, refs, "audio", cfg, cfg.train.stage1.eval_batch_size, cache_dir,
                              f"audio-ravdess-{split}", problems)
        left_out = rows.add(refs, by_uid, enc)
        if left_out:
            logger.warning("%s: %d clips have no audio vector and are left out", split, left_out)
    return rows.result(with_copies=False)


def load_augmented_vectors(ravdess_root: Path, cfg: Config, cache_dir: Optional[Path], copies: int,
                           seed: int = 0) -> ClipVectors:
    """Vectors of `copies` augmented copies of every labelled RAVDESS clip (training/stage1/augmented_vectors.py)."""
    from training.stage1.audio_augment import AugmentSettings
    from training.stage1.augmented_vectors import augmented_backbone

    encoder, splits = _lite_refs(ravdess_root, cfg)
    settings = AugmentSettings()
    rows = _Rows()
    for split, (refs, by_uid) in splits.items():
        for k in range(copies):
            rows.add(refs, by_uid, augmented_backbone(encoder, refs, cfg, k, seed, settings, cache_dir,
                                                      f"audio-ravdess-{split}"), copy=k)
    return rows.result(with_copies=True)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per label space: test accuracy and weighted F1, mean ± std over seeds."""
    out = [f"RAVDESS audio branch, held-out actors {report['actors']['test']} "
           f"({report['clips']['test']} clips; fit {report['actors']['fit'][0]}-{report['actors']['fit'][-1]}, "
           f"select {report['actors']['select']}), seeds {report['seeds']}:"]
    for space, r in report["label_spaces"].items():
        out.append(f"  {len(r['classes'])} classes ({space}): accuracy {r['test_accuracy']['mean']:.4f} ± "
                   f"{r['test_accuracy']['std']:.4f}, weighted F1 {r['test_weighted_f1']['mean']:.4f} ± "
                   f"{r['test_weighted_f1']['std']:.4f}")
    for key, what in (("cross_validation", ""), ("cross_validation_speaker_norm", ", speaker-normalised"),
                      ("cross_validation_augmented", ", augmented"),
                      ("cross_validation_augmented_speaker_norm", ", augmented, speaker-normalised")):
        for space, r in (report.get(key) or {}).get("label_spaces", {}).items():
            out.append(f"  leave-actors-out{what}, 5 folds, {len(r['classes'])} classes ({space}): accuracy "
                       f"{r['accuracy']['mean']:.4f} ± {r['accuracy']['std']:.4f} over folds "
                       f"(min {min(f['accuracy'] for f in r['folds']):.4f}), weighted F1 "
                       f"{r['weighted_f1']['mean']:.4f}, macro F1 {r['macro_f1']['mean']:.4f}")
    return out


def run_ravdess_audio(ravdess_root: Path, cfg: Config, run: Any, cache_dir: Optional[Path],
                      seeds: Sequence[int] = (0, 1, 2), settings: Optional[HeadSettings] = None,
                      folds: bool = False, augment: int = 0) -> dict[str, Any]:
    """Load (or compute) the vectors, score both label spaces, write metrics/ravdess_audio.json to the run.

    folds: also leave-actors-out cross-validation over the five 4-actor folds (evaluate_folds).
    augment: with folds, also the folds with that many augmented copies of each fit clip.
    """
    start = time.perf_counter()
    data = load_clip_vectors(ravdess_root, cfg, cache_dir)
    loaded = time.perf_counter() - start
    settings = settings or HeadSettings.from_config(cfg)
    report = evaluate_held_out(data, seeds, settings)
    if folds:
        report["cross_validation"] = evaluate_folds(data, seeds, settings)
        if cfg.train.speaker_norm > 0:  # as the recipe trains the head
            report["cross_validation_speaker_norm"] = evaluate_folds(data, seeds, settings,
                                                                     speaker_norm=cfg.train.speaker_norm)
        if augment > 0:
            aug = load_augmented_vectors(ravdess_root, cfg, cache_dir, augment)
            report["cross_validation_augmented"] = evaluate_folds(data, seeds, settings, augmented=aug)
            if cfg.train.speaker_norm > 0:
                report["cross_validation_augmented_speaker_norm"] = evaluate_folds(
                    data, seeds, settings, speaker_norm=cfg.train.speaker_norm, augmented=aug)
    report["cache_dir"] = None if cache_dir is None else str(cache_dir)
    report["seconds"] = {"vectors": round(loaded, 1), "total": round(time.perf_counter() - start, 1)}
    run.save_metrics(METRICS_NAME, report)
    return report
