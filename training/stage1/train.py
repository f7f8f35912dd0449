"""Stage 1 of MAGTKD: one utterance model per modality, the teacher with cross-entropy, students with KD.

`train_stage1` builds `UtteranceModel(build_encoder(modality), feature_dim, C)`,
freezes the encoder as `encoders.<modality>.trainable_layers` says, and trains
with cross-entropy, or — given a frozen teacher of another modality — with
CE + w_soft * L_s + w_feat * L_f on the same utterances (MAGTKD_SPEC.md). The
epoch is selected on dev weighted-F1, never on test.

On a CPU the encoders dominate the cost, so a frozen encoder runs once per
split and only the head trains on the stored vectors; the teacher's logits
and features are likewise computed once. Only with trainable encoder layers
are inputs decoded and encoded every epoch. Utterances lacking the modality
are excluded (counted); a clip that fails to decode is skipped, logged and
counted, never fatal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from magtkd_stream.config import Config
from magtkd_stream.encoders.base import Encoder, UtteranceModel
from training.data.types import Dataset
from training.metrics import save_confusion_png, save_curves_png
from training.runs import RunFolder, resolve_device, seed_everything
from training.runs import progress as progress_bar
from training.stage1.cache import (
    TeacherOutputs,
    cached_backbone,
    model_device,
    normalize_by_speaker,
    prior_of,
    teacher_outputs,
)
from training.stage1.inputs import (
    InputProblems,
    InputTransform,
    make_input,
    prompt_length,
    split_refs,
)
from training.stage1.loop import CachedSource, LiveSource, Source, source_rows
from training.stage1.state import (
    TrainableView,
    build_seeded_encoder,
    load_model_state,
    model_state,
    save_stage1_checkpoint,
)
from training.stage1.steps import (
    evaluate_source,
    kd_loss,
    label_tensor,
    length_grouped,
    lr_schedule,
    param_groups,
    score_asr_style,
    usable_rows,
)
from training.stage1.transcript_style import TranscriptStyler, styler_for

logger = logging.getLogger(__name__)

SELECT_SPLIT = "dev"


@dataclass
class Stage1Settings:
    """Loop settings; `from_config` reads cfg.train.stage1 (the official values are its defaults)."""

    lr: float = 1e-5
    encoder_lr: Optional[float] = None  # fine-tuned backbone layers; None = lr
    finetune_epochs: Optional[int] = None  # epochs when backbone layers train; None = epochs
    weight_decay: float = 0.01
    batch_size: int = 4
    eval_batch_size: int = 32
    epochs: int = 10
    grad_clip: float = 10.0
    warmup_ratio: float = 0.1
    patience: int = 0
    num_workers: int = 0
    device: str = "auto"
    cache_on_disk: bool = True  # keep frozen-backbone vectors in the run folder
    asr_style_prob: float = 0.0  # live text: chance each training turn is rewritten as ASR output

    @classmethod
    def from_config(cls, cfg: Config) -> "Stage1Settings":
        section = cfg.train.stage1
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(section, n) for n in names if hasattr(section, n)})


@dataclass
class Stage1Result:
    model: UtteranceModel  # the selected (best dev) model, on the CPU, in eval mode
    metrics: dict[str, Any]
    checkpoint: Optional[Path] = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def train_stage1(
    cfg: Config,
    dataset: Dataset,
    modality: str,
    run: RunFolder | str | Path | None = None,
    teacher: Optional[UtteranceModel] = None,
    resume: bool = False,
    *,
    encoder: Optional[Encoder] = None,
    init_from: Optional[UtteranceModel] = None,
    settings: Optional[Stage1Settings] = None,
    name: Optional[str] = None,
    progress: bool = True,
) -> Stage1Result:
    """Train one stage-1 model (teacher or student) and select its epoch on dev weighted-F1.

    encoder: a ready encoder (e.g. training.stage1.array_encoder.ArrayEncoder) instead of
    build_encoder(modality, cfg) + encoders.<modality>.trainable_layers.
    teacher: a trained model of modality cfg.kd.teacher; it is frozen and
    distils into this one. init_from: a trained model of the same modality whose
    head and trained encoder weights this one starts from (e.g. the CE student
    before its KD phase). run: a RunFolder (or its path) that receives the
    checkpoint checkpoints/best-<name>.safetensors, metrics/stage1-<name>.json,
    the resume state, and the backbone cache; None keeps everything in memory.
    """
    settings = settings or Stage1Settings.from_config(cfg)
    name = name or (f"{modality}_kd" if teacher is not None else modality)
    if SELECT_SPLIT not in dataset.splits or "train" not in dataset.splits:
        raise ValueError(f"stage 1 needs 'train' and '{SELECT_SPLIT}' splits to train and select; "
                         f"dataset {dataset.name!r} has {sorted(dataset.splits)}")
    if teacher is not None:
        if teacher.modality != cfg.kd.teacher:
            raise ValueError(f"the teacher is a {teacher.modality} model but kd.teacher is {cfg.kd.teacher!r}")
        if teacher.modality == modality:
            raise ValueError(f"a {modality} model cannot distil from a teacher of the same modality")
    folder = RunFolder(run) if isinstance(run, (str, Path)) else run
    seed_everything(cfg.seed)
    device = resolve_device(settings.device)
    if encoder is None:
        encoder = build_seeded_encoder(modality, cfg)
        encoder.set_trainable_layers(getattr(cfg.encoders, modality).trainable_layers)
    elif encoder.modality != modality:
        raise ValueError(f"the given encoder is a {encoder.modality} encoder, not {modality}")
    labels_names = tuple(dataset.labels)
    model = UtteranceModel(encoder, cfg.feature_dim, len(labels_names))
    if init_from is not None:
        if init_from.modality != modality:
            raise ValueError(f"init_from is a {init_from.modality} model; this is a {modality} model")
        load_model_state(model, model_state(init_from))
    frozen = not any(p.requires_grad for p in encoder.parameters())
    if not frozen and settings.finetune_epochs:
        settings = dataclasses.replace(settings, epochs=settings.finetune_epochs)

    refs = {s: split_refs(dataset, s) for s in dataset.splits}
    labels = {s: label_tensor(r) for s, r in refs.items()}
    problems = {s: InputProblems(f"stage1/{name}/{s}") for s in refs}
    rows = {s: usable_rows(r, modality, encoder) for s, r in refs.items()}
    for s, r in refs.items():
        problems[s].absent(sum(1 for i, x in enumerate(r) if x.utt.label is not None) - len(rows[s]))
        problems[s].report.skipped["unlabelled"] += sum(1 for x in r if x.utt.label is None)
    fit = getattr(encoder, "fit_inputs", None)
    if callable(fit):
        fit([make_input(refs["train"][i], modality, encoder, cfg) for i in rows["train"]])

    model.to(device)
    source: Source
    speaker_norm: Optional[dict] = None
    if frozen:
        cache_dir = folder.path / "cache" if folder is not None and settings.cache_on_disk else None
        encoded = {}
        for s in refs:
            sub = [refs[s][i] for i in rows[s]]
            enc = cached_backbone(encoder, sub, modality, cfg, settings.eval_batch_size, cache_dir,
                                  f"{modality}-{dataset.name}-{s}", problems[s], settings.num_workers, progress)
            encoded[s] = (rows[s], enc)
        norm = (prior_of(encoded["train"][1], cfg.train.speaker_norm)
                if modality == "audio" and cfg.train.speaker_norm > 0 else None)
        if modality == "audio" and cfg.train.augment_copies > 0:  # prior above: from the clean clips only
            from training.stage1.augmented_vectors import augment_split

            encoded["train"] = augment_split(encoder, refs["train"], *encoded["train"], cfg,
                                             cfg.train.augment_copies, cache_dir, f"{modality}-{dataset.name}-train")
            rows["train"] = encoded["train"][0]
            labels["train"] = label_tensor(refs["train"])
            logger.info("stage 1 %s: %d augmented copies of each training clip, %d rows in all", name,
                        cfg.train.augment_copies, len(rows["train"]))
        if modality == "audio" and norm is not None:  # as the service normalises each speaker
            speaker_norm = {"audio": norm.to_dict()}
            encoded = {s: (r, normalize_by_speaker(e, [refs[s][i] for i in r], norm, cfg.seed))
                       for s, (r, e) in encoded.items()}
            logger.info("stage 1 %s: audio vectors normalised per speaker (prior weight %g)", name,
                        cfg.train.speaker_norm)
        source = CachedSource(model, encoded, {s: len(r) for s, r in refs.items()}, device, progress)
        rows = {s: source.ok_rows(s) for s in refs}
    styler: Optional[TranscriptStyler] = None
    if not frozen:
        styler = styler_for(settings.asr_style_prob if modality == "text" else 0.0, cfg.seed)
        source = LiveSource(model, refs, modality, cfg, problems, settings.num_workers, device, progress,
                            train_transform=styler)

    t_out = None
    if teacher is not None:
        orig = model_device(teacher)
        teacher.to(device)
        sub = [refs["train"][i] for i in rows["train"]]
        part = teacher_outputs(teacher, sub, cfg, settings.eval_batch_size, settings.num_workers, progress)
        teacher.to(orig)
        n = len(refs["train"])
        t_out = TeacherOutputs(torch.zeros(n, part.feats.shape[1]), torch.zeros(n, part.logits.shape[1]),
                               torch.zeros(n, dtype=torch.bool))
        idx = torch.tensor(rows["train"], dtype=torch.long)
        t_out.feats[idx], t_out.logits[idx], t_out.ok[idx] = part.feats, part.logits, part.ok

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, settings.lr, settings.encoder_lr), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(rows["train"]) / settings.batch_size))
    total = steps_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(total, int(settings.warmup_ratio * total)))
    teacher_desc = f" (KD from {teacher.modality})" if teacher is not None else ""
    logger.info("stage 1 %s%s: %s encoder, %d trainable parameters, %d steps of batch %d on %s",
                name, teacher_desc, "frozen (cached vectors)" if frozen else "trainable", sum(p.numel() for p in params),
                total, settings.batch_size, device)
    for s in refs:
        logger.info("stage 1 %s %s: %d of %d utterances used; left out: %s", name, s, len(rows[s]),
                    len(refs[s]), problems[s].counts() or "none")
    if styler is not None:
        logger.info("stage 1 %s: each training turn rewritten as ASR output with probability %.2f",
                    name, styler.prob)
    if not rows["train"] or not rows[SELECT_SPLIT]:
        raise ValueError(f"stage 1 {name}: no usable {modality} utterances in train or {SELECT_SPLIT} "
                         f"({len(rows['train'])} / {len(rows[SELECT_SPLIT])}); see the counts above")

    lengths: Optional[dict[str, list[int]]] = None  # live text prompts: batch by length to cut padding
    if not frozen and modality == "text":
        turns = cfg.encoders.text.context_turns
        lengths = {s: [prompt_length(r, turns) for r in refs[s]] for s in refs}
    dev_rows = sorted(rows[SELECT_SPLIT], key=lengths[SELECT_SPLIT].__getitem__) if lengths else rows[SELECT_SPLIT]
    view = TrainableView(model)
    best = {"score": -1.0, "epoch": -1}
    history: list[dict[str, Any]] = []
    best_state = model_state(model)
    start = 0
    if resume and folder is not None:
        state = folder.load_state(view, optimizer, scheduler, tag=f"stage1-{name}")
        if state is not None:
            start, best = state["epoch"] + 1, dict(state["best"])
            history = list(state["extra"].get("history", []))
            best_state = dict(state["extra"].get("best_state", best_state))
    stale = sum(1 for h in history if h["epoch"] > best["epoch"])
    gen = torch.Generator()
    epochs: Any = range(start, settings.epochs)
    if progress:
        epochs = progress_bar(epochs, f"stage 1 {name}", total=len(epochs), unit="epoch")
    for epoch in epochs:
        if settings.patience and stale >= settings.patience:
            logger.info("stage 1 %s: no dev improvement for %d epochs; stopping", name, stale)
            break
        t0 = time.time()
        gen.manual_seed(cfg.seed * 1000 + epoch)
        if styler is not None:
            styler.reseed(epoch)
        order = [rows["train"][i] for i in torch.randperm(len(rows["train"]), generator=gen).tolist()]
        if lengths is not None:
            order = length_grouped(order, lengths["train"], settings.batch_size, gen)
        model.train()
        losses = []
        for idx, feats, logits, keep in source.batches("train", order, settings.batch_size, train=True,
                                                        desc=f"{name} epoch {epoch + 1}/{settings.epochs}"):
            if not bool(keep.any()):
                continue
            keep_d = keep.to(logits.device)
            loss = kd_loss(logits[keep_d], feats[keep_d], labels["train"][idx][keep].to(logits.device),
                            t_out, idx[keep], cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        model.eval()
        dev, _, _ = evaluate_source(source, SELECT_SPLIT, dev_rows, labels[SELECT_SPLIT],
                                    labels_names, settings.eval_batch_size)
        score = float(dev.get("weighted_f1", 0.0))
        entry = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                 "dev_weighted_f1": score, "dev_accuracy": float(dev.get("accuracy", 0.0)),
                 "lr": float(scheduler.get_last_lr()[0]), "seconds": round(time.time() - t0, 2)}
        history.append(entry)
        if score > best["score"]:
            best, best_state, stale = {"score": score, "epoch": epoch}, model_state(model), 0
        else:
            stale += 1
        logger.info("stage 1 %s epoch %d/%d: loss %.4f, dev weighted-F1 %.4f acc %.4f (best %.4f @ %d), %.1f s",
                    name, epoch + 1, settings.epochs, entry["loss"], score, entry["dev_accuracy"],
                    best["score"], best["epoch"] + 1, entry["seconds"])
        if folder is not None:
            folder.save_state(epoch, view, optimizer, scheduler, best, tag=f"stage1-{name}",
                              extra={"history": history, "best_state": best_state})

    load_model_state(model, best_state)
    model.eval()
    if folder is not None and history:
        save_curves_png(history, folder.figure_path(f"stage1-{name}-curves"), f"stage 1 {name} (selected on dev "
                        "weighted F1)", best["epoch"] if best["epoch"] >= 0 else None)
    rows = {s: source_rows(source, s, r) for s, r in rows.items()}
    metrics: dict[str, Any] = {
        "name": name, "modality": modality, "dataset": dataset.name,
        "teacher": teacher.modality if teacher is not None else None,
        "kd": dataclasses.asdict(cfg.kd) if teacher is not None else None,
        "settings": dataclasses.asdict(settings), "frozen_backbone": frozen,
        "trainable_parameters": sum(p.numel() for p in params),
        "history": history, "best_epoch": best["epoch"], "best_dev_weighted_f1": best["score"],
        "selected_on": f"{SELECT_SPLIT} weighted_f1",
    }
    for s in refs:
        if s == "train" or not rows[s]:
            continue
        m, _, _ = evaluate_source(source, s, sorted(rows[s], key=lengths[s].__getitem__) if lengths else rows[s], labels[s], labels_names, settings.eval_batch_size)
        metrics[s] = m
        if s != SELECT_SPLIT and "weighted_f1" in m:
            logger.info("stage 1 %s %s (selected on %s): weighted-F1 %.4f acc %.4f", name, s, SELECT_SPLIT,
                        m["weighted_f1"], m["accuracy"])
        if folder is not None and "confusion" in m:
            save_confusion_png(m["confusion"], labels_names, folder.figure_path(f"stage1-{name}-{s}"),
                               title=f"stage 1 {name} ({s})")
        if isinstance(source, LiveSource) and modality == "text":
            metrics[f"{s}_asr_style"] = score_asr_style(source, s, rows[s], lengths, labels[s], labels_names,
                                                         settings.eval_batch_size, name)
    rows = {s: source_rows(source, s, r) for s, r in rows.items()}
    metrics["counts"] = {s: {"utterances": len(refs[s]), "used": len(rows[s]), **problems[s].counts()} for s in refs}
    checkpoint = None
    model.to("cpu")
    if folder is not None:
        checkpoint = save_stage1_checkpoint(folder.best_checkpoint(f"stage1-{name}"), model, cfg, labels_names,
                                            extra={"name": name, "best_epoch": best["epoch"],
                                                   "dev_weighted_f1": best["score"],
                                                   "teacher": metrics["teacher"],
                                                   **({"speaker_norm": speaker_norm} if speaker_norm else {})})
        metrics["checkpoint"] = str(checkpoint)
        folder.save_metrics(f"stage1-{name}", metrics)
    return Stage1Result(model=model, metrics=metrics, checkpoint=checkpoint, counts=metrics["counts"])


def predict_stage1(
    model: UtteranceModel, cfg: Config, dataset: Dataset, split: str, batch_size: int = 32,
    num_workers: int = 0, transform: Optional[InputTransform] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) of a trained stage-1 model on the labelled utterances of a split that have its modality.

    transform: rewrites each input first (e.g. a TranscriptStyler to read typed text as ASR output).
    """
    refs = split_refs(dataset, split)
    problems = {split: InputProblems(f"predict/{model.modality}/{split}")}
    source = LiveSource(model, {split: refs}, model.modality, cfg, problems, num_workers,
                        model_device(model), progress=False, eval_transform=transform)
    rows = usable_rows(refs, model.modality, model.encoder)
    was = model.training
    model.eval()
    try:
        _, t, p = evaluate_source(source, split, rows, label_tensor(refs), tuple(dataset.labels), batch_size)
    finally:
        model.train(was)
    return t, p
