"""Recipes: stage 1 -> feature extraction -> stage 2 -> evaluation, in one run folder.

`run_standard` is the single-dataset recipe (MELD, IEMOCAP or the synthetic
set): the teacher (cfg.kd.teacher) with cross-entropy, every other modality
with cross-entropy and, for audio and video, a student distilled from the
frozen teacher; then features, MAGT, and a test evaluation of the streaming
checkpoint. The pieces are separate functions because the CLI also runs them
one by one and training/lite.py mixes several sources with them.

Frozen encoders cost nearly all of the CPU time, so features of frozen
backbones are read from the stage-1 vector cache in the run folder instead of
encoding every clip a second time.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from magtkd_stream.model.checkpoint import load_checkpoint, save_checkpoint
from magtkd_stream.config import Config, config_to_dict
from magtkd_stream.encoders.base import UtteranceModel
from magtkd_stream.names import MODALITIES
from training.data.types import Dataset
from training.stage2.features import DialogueFeatures, features_path, save_features, split_into_dialogues
from training.recipe_inputs import Limits, dataset_counts, pick, subsample
from training.runs import RunFolder, seed_everything
from training.stage1.train import Stage1Result, Stage1Settings, train_stage1
from training.stage1.cache import Encoded, apply_head, cached_backbone, normalize_by_speaker
from training.stage1.inputs import InputProblems, has_input, split_refs
from training.stage1.state import load_stage1_model, trainable_encoder_state
from training.studies.summary_table import write_summary_table
from training.stage1.transcript_style import asr_style_dataset

logger = logging.getLogger(__name__)

STREAM_CHECKPOINT = "stream.safetensors"  # under checkpoints/: what the service loads
REPORT = "report.json"


# ----------------------------------------------------------------------- stage 1
@dataclass
class Stage1Set:
    """The stage-1 models of one recipe: cross-entropy models and distilled students, by modality."""

    plain: dict[str, Stage1Result] = field(default_factory=dict)
    distilled: dict[str, Stage1Result] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        out = {}
        for r in [*self.plain.values(), *self.distilled.values()]:
            m = r.metrics
            out[m["name"]] = {k: m.get(k) for k in ("modality", "dataset", "teacher", "best_epoch",
                                                    "best_dev_weighted_f1", "counts", "checkpoint")}
            for split in ("dev", "test"):
                if isinstance(m.get(split), dict) and "accuracy" in m[split]:
                    out[m["name"]][split] = {k: m[split][k] for k in ("n", "accuracy", "weighted_f1", "macro_f1")}
        return out


def stage1_model(
    cfg: Config, dataset: Dataset, modality: str, run: RunFolder, resume: bool = False,
    teacher: Optional[UtteranceModel] = None, name: Optional[str] = None,
) -> Stage1Result:
    """Train one stage-1 model into `run`; with resume, a model already finished there is loaded instead."""
    name = name or (f"{modality}_kd" if teacher is not None else modality)
    ckpt, metrics = run.best_checkpoint(f"stage1-{name}"), run.metrics_path(f"stage1-{name}")
    if resume and ckpt.is_file() and metrics.is_file():
        seed_everything(cfg.seed)  # randomly initialised backbones are rebuilt exactly as trained
        model = load_stage1_model(ckpt, modality, cfg=cfg)
        logger.info("stage 1 %s: finished earlier, loaded %s", name, ckpt)
        data = json.loads(metrics.read_text(encoding="utf-8"))
        return Stage1Result(model=model, metrics=data, checkpoint=ckpt, counts=data.get("counts", {}))
    return train_stage1(cfg, dataset, modality, run=run, teacher=teacher, resume=resume, name=name)


def train_stage1_set(
    cfg: Config, dataset: Dataset, run: RunFolder, resume: bool = False,
    modalities: Sequence[str] = MODALITIES,
) -> Stage1Set:
    """The teacher first, then each other modality with CE and (audio, video) distilled from the teacher.

    The distilled video student is trained only when kd.distill_video is set: it is the
    only use of it. There is no distilled text kind, so a text student (when another
    modality teaches) is trained with cross-entropy alone.
    """
    teacher_m = cfg.kd.teacher
    out = Stage1Set()
    if teacher_m in modalities:
        out.plain[teacher_m] = stage1_model(cfg, dataset, teacher_m, run, resume)
    for m in modalities:
        if m == teacher_m:
            continue
        out.plain[m] = stage1_model(cfg, dataset, m, run, resume)
        distil = m != "text" and (m != "video" or cfg.kd.distill_video) and teacher_m in out.plain
        if distil:
            out.distilled[m] = stage1_model(cfg, dataset, m, run, resume, teacher=out.plain[teacher_m].model)
    return out


def load_stage1_set(cfg: Config, paths: Mapping[str, Path]) -> Stage1Set:
    """Stage-1 models from checkpoints by kind ("text", "audio", "audio_kd", ...)."""
    out = Stage1Set()
    for kind, path in paths.items():
        modality = kind.removesuffix("_kd")
        if modality not in MODALITIES:
            raise ValueError(f"stage-1 kind {kind!r}: expected one of text, audio, video, audio_kd, video_kd")
        seed_everything(cfg.seed)
        model = load_stage1_model(path, modality, cfg=cfg)
        result = Stage1Result(model=model, metrics={"name": kind}, checkpoint=Path(path))
        (out.distilled if kind.endswith("_kd") else out.plain)[modality] = result
    return out


def stage1_checkpoints(run: RunFolder) -> dict[str, Path]:
    """The stage-1 checkpoints a run folder holds, by kind."""
    found = {}
    for kind in ("text", "audio", "video", "audio_kd", "video_kd"):
        p = run.best_checkpoint(f"stage1-{kind}")
        if p.is_file():
            found[kind] = p
    return found


# ----------------------------------------------------------------------- extraction
def stage1_speaker_norm(stage1: Stage1Set) -> dict[str, Any]:
    """modality -> SpeakerNormalizer of the stage-1 models trained on speaker-normalised vectors."""
    from magtkd_stream.model.speaker_norm import SpeakerNormalizer

    out: dict[str, Any] = {}
    for m, r in stage1.plain.items():
        if r.checkpoint is not None and Path(r.checkpoint).is_file():
            entry = (load_checkpoint(r.checkpoint).extra.get("speaker_norm") or {}).get(m)
            if entry:
                out[m] = SpeakerNormalizer.from_dict(entry)
    return out



def extract_split_cached(
    cfg: Config, dataset: Dataset, split: str, models: Mapping[str, UtteranceModel], cache_dir: Path,
    batch_size: int, speaker_norm: Optional[Mapping[str, Any]] = None,
) -> tuple[list[DialogueFeatures], dict[str, dict[str, int]]]:
    """One split's features from the stage-1 backbone cache (encoding only what stage 1 did not see).

    models: feature kind ("text", "audio_kd", ...) -> model. The labelled rows of a
    split are cached by stage 1 under the same name and utterance list, so a frozen
    backbone is never run twice on them.
    """
    refs = split_refs(dataset, split)
    n = len(refs)
    feats: dict[str, np.ndarray] = {}
    present = {m: np.zeros(n, dtype=bool) for m in MODALITIES}
    counts: dict[str, dict[str, int]] = {}
    for kind, model in models.items():
        m = kind.removesuffix("_kd")
        labelled = [i for i, r in enumerate(refs) if r.utt.label is not None and has_input(r.utt, m, model.encoder)]
        unlabelled = [i for i, r in enumerate(refs) if r.utt.label is None and has_input(r.utt, m, model.encoder)]
        problems = InputProblems(f"extract/{kind}/{split}")
        problems.absent(n - len(labelled) - len(unlabelled))
        vectors, ok = torch.zeros(n, model.encoder.dim), torch.zeros(n, dtype=torch.bool)
        for rows, suffix in ((labelled, ""), (unlabelled, "-unlabelled")):
            if not rows:
                continue
            enc = cached_backbone(model.encoder, [refs[i] for i in rows], m, cfg, batch_size, cache_dir,
                                  f"{m}-{dataset.name}-{split}{suffix}", problems, progress=True)
            idx = torch.tensor(rows, dtype=torch.long)
            vectors[idx], ok[idx] = enc.vectors.float(), enc.ok
        encoded = Encoded(vectors, ok)
        if speaker_norm and m in speaker_norm:  # the head was trained on vectors normalised per speaker
            encoded = normalize_by_speaker(encoded, refs, speaker_norm[m], cfg.seed)
        f, _ = apply_head(model, encoded)
        feats[kind] = f.numpy().astype(np.float32)
        if not kind.endswith("_kd"):
            present[m] = ok.numpy().astype(bool)
            counts[m] = {"present": int(ok.sum()), **problems.counts()}
        logger.info("extract %s %s: %d of %d utterances present", split, kind, int(ok.sum()), n)
    dialogues = split_into_dialogues(dataset.splits[split], split, feats, present, cfg.magt.max_speakers)
    return dialogues, counts


def extract_set(
    cfg: Config, dataset: Dataset, stage1: Stage1Set, out_dir: Path, cache_dir: Optional[Path] = None,
    splits: Optional[Sequence[str]] = None, keep: Optional[Limits] = None,
) -> dict[str, Path]:
    """Write <out_dir>/<split>.safetensors for every split; returns split -> path.

    With a cache folder, backbone vectors come from the stage-1 cache (its key
    holds a checksum of the weights, so fine-tuned encoders get their own
    entries); otherwise training.stage2.extract.extract_features encodes every utterance.
    keep: at most this many dialogues per split go into the files (stage 2's
    share of a large source); the choice is the same seeded one `subsample` makes.
    With `train.stage2.asr_style` every transcript is first rewritten as the ASR
    writes it (training/stage1/transcript_style.py), so MAGT learns the text the service feeds it.
    """
    if cfg.train.stage2.asr_style:
        dataset = asr_style_dataset(dataset)
    plain = {m: r.model for m, r in stage1.plain.items()}
    distilled = {m: r.model for m, r in stage1.distilled.items()}
    if not plain:
        raise ValueError("feature extraction needs at least one stage-1 model")
    keep = keep or Limits()
    norms = stage1_speaker_norm(stage1)
    if cache_dir is None:
        from training.stage2.extract import extract_features

        if norms:
            raise ValueError("train.speaker_norm: features of speaker-normalised heads are extracted from the "
                             "stage-1 cache; give a cache folder")
        return extract_features(cfg, subsample(dataset, keep, cfg.seed), plain, out_dir, kd_models=distilled,
                                splits=splits)
    models = {**plain, **{f"{m}_kd": x for m, x in distilled.items()}}
    heads = {k: x.head for k, x in models.items()}
    encoder_dims = {k.removesuffix("_kd"): int(x.encoder.dim) for k, x in models.items()}
    batch = Stage1Settings.from_config(cfg).eval_batch_size
    paths = {}
    for split in splits or list(dataset.splits):
        dialogues, counts = extract_split_cached(cfg, dataset, split, models, Path(cache_dir), batch, norms)
        dialogues = pick(dialogues, keep.of(dataset.name, split), cfg.seed, f"{dataset.name}/{split}")
        meta = {"labels": list(dataset.labels), "encoder_dims": encoder_dims, "feature_dim": cfg.feature_dim,
                "profile": cfg.profile, "config": config_to_dict(cfg), "dataset": dataset.name, "split": split,
                "kinds": sorted(models), "counts": counts}
        paths[split] = save_features(features_path(out_dir, split), dialogues, meta, heads=heads)
        logger.info("extract %s: %d dialogues -> %s", split, len(dialogues), paths[split])
    return paths


# ----------------------------------------------------------------------- checkpoint
def encoder_states(stage1: Stage1Set) -> dict[str, dict[str, torch.Tensor]]:
    """Fine-tuned encoder weights by feature kind ("text", "audio_kd", ...); frozen encoders give none."""
    out = {}
    for suffix, group in (("", stage1.plain), ("_kd", stage1.distilled)):
        for m, r in group.items():
            state = trainable_encoder_state(r.model.encoder)
            if state:
                out[m + suffix] = {k: v.detach().cpu() for k, v in state.items()}
    return out


def encoder_states_from_files(paths: Mapping[str, Path]) -> dict[str, dict[str, torch.Tensor]]:
    """The same, read from stage-1 checkpoint files by kind (no model is built)."""
    out = {}
    for kind, path in paths.items():
        state = load_checkpoint(path).state_dict(f"{kind.removesuffix('_kd')}.encoder")
        if state:
            out[kind] = state
    return out


def stream_checkpoint(run: RunFolder, encoders: Optional[Mapping[str, Mapping[str, torch.Tensor]]] = None) -> Path:
    """checkpoints/stream.safetensors: the stage-2 checkpoint plus the fine-tuned encoder weights, if any.

    The service rebuilds pretrained backbones from the config, so only encoder
    parameters that stage 1 trained are added (under "<modality>.encoder."),
    taken from the kind whose features MAGT reads (the distilled one for "audio_kd").
    """
    ck = load_checkpoint(run.best_checkpoint())
    kinds = dict(ck.extra.get("feature_kinds") or {})
    modules: dict[str, Mapping[str, torch.Tensor]] = {"magt": ck.state_dict("magt")}
    extra = dict(ck.extra)
    norms = {}
    for m in MODALITIES:  # heads trained on speaker-normalised vectors: the service must normalise too
        stage1 = run.best_checkpoint(f"stage1-{kinds.get(m, m)}")
        entry = (load_checkpoint(stage1).extra.get("speaker_norm") or {}).get(m) if stage1.is_file() else None
        if entry:
            norms[m] = entry
    if norms:
        extra["speaker_norm"] = norms
    for m in MODALITIES:
        head = ck.state_dict(f"{m}.head")
        if head:
            modules[f"{m}.head"] = head
        state = (encoders or {}).get(kinds.get(m, m))
        if state:
            modules[f"{m}.encoder"] = state
    path = run.path / "checkpoints" / STREAM_CHECKPOINT
    return save_checkpoint(path, modules, ck.config, ck.labels, extra=extra)


def export_checkpoint(src: Path, dest: Path) -> Path:
    """Copy the streaming checkpoint to `dest` (atomically: a half-written asset is never loaded)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(Path(src).read_bytes())
    tmp.replace(dest)
    logger.info("exported %s -> %s (%.1f MB)", src, dest, dest.stat().st_size / 1e6)
    return dest


# ----------------------------------------------------------------------- evaluation
def evaluate_checkpoint(
    cfg: Config, checkpoint: Path, features_file: Path | Sequence[Path], windows: Sequence[int],
) -> dict[str, Any]:
    """Scores of a streaming checkpoint on one features file (or the union of several), per window (0 = full)."""
    from training.stage2.evaluate import evaluate_stage2

    ck = load_checkpoint(checkpoint)
    out = {}
    for w in dict.fromkeys(int(x) for x in windows):
        m = evaluate_stage2(cfg, ck, features_file, w)
        out[str(w)] = {k: m[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1", "per_class_f1", "by_source")
                       if k in m}
        logger.info("evaluate %s window %s: acc %.4f wF1 %.4f", features_file, w or "full",
                    m["accuracy"], m["weighted_f1"])
    return out


def write_report(run: RunFolder, report: Mapping[str, Any], name: str = REPORT) -> Path:
    path = run.path / name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


def problems_of(datasets: Sequence[Dataset]) -> dict[str, dict[str, int]]:
    """Load problems (missing/unreadable clips, bad rows, ...) by source, as the run report counts them."""
    return {d.name: {k: int(v) for k, v in sorted(d.report.skipped.items())} for d in datasets}


def run_standard(
    cfg: Config, dataset: Dataset, run: RunFolder, resume: bool = False, export: Optional[Path] = None,
    extra_report: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """Stage 1 -> extract -> stage 2 -> evaluate on one dataset; returns (and writes) the run report."""
    from training.stage2.train import train_stage2

    times: dict[str, float] = {}
    report: dict[str, Any] = {"recipe": "standard", "dataset": dataset.name, "labels": list(dataset.labels),
                              "counts": dataset_counts(dataset), "load_problems": problems_of([dataset]),
                              "load_report": dataset.report.to_dict(), **dict(extra_report or {})}
    t0 = time.time()
    stage1 = train_stage1_set(cfg, dataset, run, resume)
    times["stage1"] = time.time() - t0
    report["stage1"] = stage1.metrics()
    write_report(run, report)

    t0 = time.time()
    feat_dir = run.path / "features"
    done = all(features_path(feat_dir, s).is_file() for s in dataset.splits)
    if not (resume and done):
        extract_set(cfg, dataset, stage1, feat_dir, cache_dir=run.path / "cache")
    times["extract"] = time.time() - t0

    t0 = time.time()
    report["stage2"] = train_stage2(cfg, feat_dir, run, resume=resume)
    times["stage2"] = time.time() - t0

    t0 = time.time()
    stream = stream_checkpoint(run, encoder_states(stage1))
    window = int(load_checkpoint(stream).extra.get("window", cfg.magt.window))
    evaluation: dict[str, Any] = {"checkpoint": str(stream), "window": window}
    for split in ("test", "dev"):
        path = features_path(feat_dir, split)
        if path.is_file():
            evaluation[split] = evaluate_checkpoint(cfg, stream, path, [0, window])
            teacher = report["stage1"].get(cfg.kd.teacher, {}).get(split)
            if teacher:
                evaluation[split]["teacher_alone"] = teacher
            break  # test when there is one, else dev
    run.save_metrics("evaluate", evaluation)
    report["evaluate"] = evaluation
    times["evaluate"] = time.time() - t0
    if export is not None:
        report["exported"] = str(export_checkpoint(stream, export))
    report["seconds"] = {k: round(v, 1) for k, v in times.items()}
    report["config"] = config_to_dict(cfg)
    write_report(run, report)
    write_summary_table(run.path, {k: v for k, v in report.items() if k != "config"}, f"magtkd-train: {run.path}")
    return report
