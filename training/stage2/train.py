"""Stage 2: train MAGT on extracted utterance features (MAGTKD_SPEC.md), select on dev, report.

The model is trained with the context it will be served with (train_window: 0 =
whole dialogue as in the paper, W > 0 = the causal sliding window of the live
service), picked by a dev metric only, and then scored on dev for every window
in train.stage2.windows and on test once, with full context and with its own
window. Sources without a modality simply mark it absent in the features; the
presence flags are MAGT's modality mask, so mixing such sources needs nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from magtkd_stream.model.checkpoint import load_checkpoint, save_checkpoint
from magtkd_stream.config import Config
from magtkd_stream.labels import label_set
from magtkd_stream.model.losses import stage2_loss
from magtkd_stream.model.magt import MAGT
from training.stage2.features import (
    MODALITIES,
    DialogueFeatures,
    choose_feature_kinds,
    collate_features,
    features_path,
    load_features,
    load_heads,
)
from training.metrics import save_confusion_png, save_curves_png
from training.stage2.evaluate import batches, calibrate_outputs, predict, score
from training.stage2.pairing import pair_modalities
from training.stage2.paired_dialogues import ComposeSettings, compose_dialogues, drop_modalities
from training.runs import RunFolder, progress, resolve_device, seed_everything

logger = logging.getLogger(__name__)
STATE_TAG = "stage2"


# -------------------------------------------------------------------- features
def load_splits(
    cfg: Config, features_dir: str | Path | Sequence[str | Path]
) -> tuple[dict[str, list[DialogueFeatures]], dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Read <dir>/{train,dev,test}.safetensors from one folder or several (a mixture of sources).

    Returns (dialogues by split, meta of the first train file, stage-1 heads found in the train files).
    Labels and feature_dim of every file must match the config.
    """
    dirs = [Path(features_dir)] if isinstance(features_dir, (str, Path)) else [Path(d) for d in features_dir]
    labels = list(label_set(cfg.labels))
    splits: dict[str, list[DialogueFeatures]] = {"train": [], "dev": [], "test": []}
    first_meta: dict[str, Any] | None = None
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for d in dirs:
        for split in splits:
            path = features_path(d, split)
            if not path.is_file():
                continue
            dialogues, meta = load_features(path)
            if list(meta["labels"]) != labels:
                raise ValueError(
                    f"{path}: features are labelled {meta['labels']}, but config labels={cfg.labels} is {labels}"
                )
            if int(meta["feature_dim"]) != cfg.feature_dim:
                raise ValueError(f"{path}: feature_dim {meta['feature_dim']} != config feature_dim {cfg.feature_dim}")
            for dia in dialogues:
                if dia.labels.size and int(dia.labels.max()) >= len(labels):
                    raise ValueError(f"{path}: dialogue {dia.did!r} has label ids >= {len(labels)}")
            splits[split].extend(dialogues)
            if split == "train":
                first_meta = first_meta or meta
                for kind, sd in load_heads(path).items():
                    heads.setdefault(kind, sd)
            logger.info("%s: %d dialogues, %d utterances", path, len(dialogues), sum(len(x) for x in dialogues))
    where = ", ".join(str(d) for d in dirs)
    for split in ("train", "dev"):
        if not splits[split]:
            raise FileNotFoundError(f"no {split} features in {where} (expected {split}.safetensors); "
                                    "stage 2 needs train, and dev for model selection")
    assert first_meta is not None
    return splits, first_meta, heads


# -------------------------------------------------------------------- training
def _linear_warmup_decay(total: int, warmup: int) -> Any:
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _train_one_epoch(
    model: MAGT,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    cfg: Config,
    window: int,
    device: torch.device,
    epoch: int,
    class_weight: torch.Tensor | None = None,
) -> dict[str, float]:
    """One pass over the training batches; returns mean loss parts (over batches with labels)."""
    model.train()
    kd, clip = cfg.kd, cfg.train.stage2.grad_clip
    sums: dict[str, float] = {}
    counted = 0
    bar = progress(loader, desc=f"stage2 epoch {epoch + 1}/{cfg.train.stage2.epochs}", unit="batch")
    for batch in bar:
        labels = batch.pop("labels").to(device)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch, window=window)
        loss, parts = stage2_loss(
            out, labels, batch["pad_mask"], kd.lambda_audio, kd.lambda_video, kd.tau, kd.stage2_feat, kd.tau_feat,
            class_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        if bool((labels >= 0).any()):  # a batch without labels contributes nothing (and no NaN)
            loss.backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            counted += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{sums['total'] / counted:.4f}")
        scheduler.step()  # the schedule counts optimizer steps (batches), labelled or not
    return {k: v / max(1, counted) for k, v in sums.items()}


def _resolve_heads(
    given: Mapping[str, nn.Module | Mapping[str, torch.Tensor]] | None,
    stored: Mapping[str, Mapping[str, torch.Tensor]],
    kinds: Mapping[str, str],
) -> dict[str, dict[str, torch.Tensor]]:
    """Heads by modality: those given, else the stored stage-1 head of the feature kind MAGT reads."""
    if given is not None:
        unknown = set(given) - set(MODALITIES)
        if unknown:
            raise ValueError(f"heads: unknown modality {sorted(unknown)[0]!r}; expected keys among {MODALITIES}")
        return {m: dict(h.state_dict() if isinstance(h, nn.Module) else h) for m, h in given.items()}
    return {m: dict(stored[kinds[m]]) for m in MODALITIES if kinds[m] in stored}


def _encoder_dims(meta: Mapping[str, Any], heads: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, int]:
    dims = {m: int(v) for m, v in dict(meta.get("encoder_dims") or {}).items() if m in MODALITIES}
    for m, sd in heads.items():
        if "proj.weight" in sd:
            dims[m] = int(sd["proj.weight"].shape[1])
    return dims


def _selection_value(dev_m: Mapping[str, Any], metric: str, source: str) -> float:
    """The dev metric that picks the epoch: of `source` alone when it is in dev, else of all of dev."""
    part = (dev_m.get("by_source") or {}).get(source) if source else None
    return float((part or dev_m)[metric])


def _epoch_train(train: list[DialogueFeatures], kinds: Mapping[str, str], labels: Sequence[str], cfg: Config,
                 compose: ComposeSettings, epoch: int) -> list[DialogueFeatures]:
    """This epoch's training dialogues: lent modalities, composed conversations, modality dropout."""
    s2 = cfg.train.stage2
    served = [d for d in train if d.source == "served"]  # already multimodal, as served: repeated, never lent to
    train = [d for d in train if d.source != "served"]
    out = pair_modalities(train, kinds, cfg.feature_dim, *s2.pairing(), np.random.default_rng([cfg.seed, epoch, 1]))
    out += served * s2.served_repeat
    out += compose_dialogues(train, kinds, labels, cfg.feature_dim, compose,
                             np.random.default_rng([cfg.seed, epoch, 2]))
    return drop_modalities(out, s2.modality_dropout, np.random.default_rng([cfg.seed, epoch, 3]))


def _class_weights(train: list[DialogueFeatures], compose: ComposeSettings, kinds: Mapping[str, str],
                   labels: Sequence[str], cfg: Config, power: float) -> torch.Tensor | None:
    """Per-class CE weights (frequency ** -power, mean 1 over the training utterances); None when power is 0."""
    if power <= 0:
        return None
    sample = _epoch_train(train, kinds, labels, cfg, compose, 0)
    y = np.concatenate([d.labels[d.labels >= 0] for d in sample])
    counts = np.bincount(y, minlength=len(labels)).astype(np.float64)
    w = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    w = w / max(1e-12, float((w[y]).mean()))
    logger.info("stage 2 class weights: %s", {labels[i]: round(float(v), 3) for i, v in enumerate(w)})
    return torch.tensor(w, dtype=torch.float32)


def train_stage2(
    cfg: Config,
    features_dir: str | Path | Sequence[str | Path],
    run: RunFolder,
    resume: bool = False,
    heads: Mapping[str, nn.Module | Mapping[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Train, select on dev, evaluate and write the streaming checkpoint into `run`. Returns the summary."""
    s2 = cfg.train.stage2
    window = cfg.magt.window if s2.train_window is None else s2.train_window
    cfg = dataclasses.replace(
        cfg,
        magt=dataclasses.replace(cfg.magt, window=window),
        train=dataclasses.replace(cfg.train, stage2=dataclasses.replace(s2, train_window=window)),
    )
    seed_everything(cfg.seed)
    if resume and run.config_path.is_file() and run.read_config() != cfg:
        logger.warning("the config differs from the one %s was started with; continuing with the new one", run.path)
    run.write_config(cfg)
    device = resolve_device(s2.device)
    splits, meta, stored_heads = load_splits(cfg, features_dir)
    labels = list(meta["labels"])
    train, dev, test = splits["train"], splits["dev"], splits["test"]
    kinds = choose_feature_kinds(train, cfg.kd)
    compose = ComposeSettings(dialogues=s2.compose_dialogues)
    if s2.compose_dev_dialogues:  # selection also rewards combining modalities, never only copying one
        dev = dev + compose_dialogues(dev, kinds, labels, cfg.feature_dim,
                                      ComposeSettings(dialogues=s2.compose_dev_dialogues),
                                      np.random.default_rng([cfg.seed, 7]), split="dev")
    class_weight = _class_weights(train, compose, kinds, labels, cfg, s2.class_balance)
    head_sd = _resolve_heads(heads, stored_heads, kinds)
    if set(head_sd) != set(MODALITIES):
        logger.warning("no stage-1 heads for %s: the checkpoint holds MAGT only and the streaming service "
                       "cannot load it", sorted(set(MODALITIES) - set(head_sd)))
    extra_base = {"encoder_dims": _encoder_dims(meta, head_sd), "window": window, "feature_kinds": kinds}
    logger.info("stage 2: %d train / %d dev / %d test dialogues, window %d, features %s, device %s",
                len(train), len(dev), len(test), window, kinds, device)

    model = MAGT(cfg.magt, cfg.feature_dim, len(labels)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s2.lr, weight_decay=s2.weight_decay)
    n_served = sum(d.source == "served" for d in train)
    steps_per_epoch = math.ceil((len(train) + (s2.served_repeat - 1) * n_served + s2.compose_dialogues)
                                / s2.batch_size)
    total = steps_per_epoch * s2.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_warmup_decay(total, int(s2.warmup_ratio * total)))

    start, history = 0, []
    best: dict[str, Any] = {"epoch": -1, "score": -math.inf, "metric": s2.select_metric, "stale": 0}
    if s2.select_source:
        logger.info("stage 2 selects on dev source %r (%s)", s2.select_source,
                    "present" if any(d.source == s2.select_source for d in dev) else "absent: all of dev instead")
    if resume:
        state = run.load_state(model, optimizer, scheduler, tag=STATE_TAG)
        if state is None:
            logger.warning("resume asked but %s has no resume state; training from the start", run.path)
        else:
            start, best, history = state["epoch"] + 1, state["best"], list(state["extra"].get("history", []))

    collate = partial(collate_features, kinds=kinds, feature_dim=cfg.feature_dim)
    for epoch in range(start, s2.epochs):
        if s2.patience and best["stale"] >= s2.patience:
            logger.info("no better dev %s for %d epochs: stopping early", s2.select_metric, s2.patience)
            break
        t0 = time.time()
        rng = np.random.default_rng([cfg.seed, epoch])  # epoch order does not depend on what ran before
        epoch_train = _epoch_train(train, kinds, labels, cfg, compose, epoch)
        loader = torch.utils.data.DataLoader(epoch_train, batch_sampler=batches(len(epoch_train), s2.batch_size, rng),
                                             collate_fn=collate, num_workers=s2.num_workers)
        losses = _train_one_epoch(model, loader, optimizer, scheduler, cfg, window, device, epoch,
                                  class_weight=class_weight)
        dev_m = score(predict(model, dev, kinds, window, s2.batch_size, device, "dev"), labels, window)
        value = _selection_value(dev_m, s2.select_metric, s2.select_source)
        improved = value > best["score"]
        entry = {"epoch": epoch, "lr": scheduler.get_last_lr()[0], "train": losses,
                 "dev": {k: dev_m[k] for k in ("accuracy", "weighted_f1", "macro_f1")},
                 "improved": improved, "seconds": round(time.time() - t0, 3)}
        history.append(entry)
        logger.info("epoch %d/%d loss %.4f dev acc %.4f wF1 %.4f mF1 %.4f%s", epoch + 1, s2.epochs,
                    losses.get("total", float("nan")), dev_m["accuracy"], dev_m["weighted_f1"], dev_m["macro_f1"],
                    "  (best)" if improved else "")
        if improved:
            best = {"epoch": epoch, "score": value, "metric": s2.select_metric, "stale": 0,
                    "source": s2.select_source or "all"}
            save_checkpoint(run.best_checkpoint(), {"magt": model, **{f"{m}.head": sd for m, sd in head_sd.items()}},
                            cfg, labels, extra={**extra_base, "epoch": epoch, "dev": dev_m})
        else:
            best["stale"] += 1
        run.save_metrics("history", {"select_metric": s2.select_metric, "best": best, "epochs": history})
        save_curves_png(history, run.figure_path("stage2-curves"), f"stage 2 (selected on dev {s2.select_metric})",
                        best["epoch"] if best.get("epoch", -1) >= 0 else None)
        run.save_state(epoch, model, optimizer, scheduler, best, tag=STATE_TAG, extra={"history": history})

    summary = _final_evaluation(cfg, run, model, labels, dev, test, kinds, window, device, best)
    if s2.calibrate:
        cal = calibrate_outputs(model, dev, kinds, head_sd, window, s2.batch_size, device)
        extra_base["temperature"] = {m: v["temperature"] for m, v in cal.items()}
        summary["calibration"] = cal
        run.save_metrics("calibration", cal)
        logger.info("calibration on dev: %s", {m: (v["temperature"], v["ece_before"], v["ece_after"])
                                               for m, v in cal.items()})
    ck = load_checkpoint(run.best_checkpoint())
    save_checkpoint(run.best_checkpoint(), {"magt": ck.state_dict("magt"),
                                            **{f"{m}.head": ck.state_dict(f"{m}.head") for m in head_sd}},
                    cfg, labels, extra={**extra_base, "epoch": best["epoch"], "metrics": summary})
    logger.info("stage 2 done: best epoch %d, dev %s %.4f; checkpoint %s", best["epoch"] + 1, s2.select_metric,
                best["score"], run.best_checkpoint())
    return summary


def _final_evaluation(
    cfg: Config, run: RunFolder, model: MAGT, labels: list[str], dev: list[DialogueFeatures],
    test: list[DialogueFeatures], kinds: Mapping[str, str], window: int, device: torch.device, best: Mapping[str, Any],
) -> dict[str, Any]:
    """Score the selected model: dev for every configured window, test once (full context and `window`)."""
    s2 = cfg.train.stage2
    model.load_state_dict(load_checkpoint(run.best_checkpoint()).state_dict("magt"))
    summary: dict[str, Any] = {"best_epoch": best["epoch"], "select_metric": s2.select_metric,
                               "train_window": window, "dev": {}, "test": {}}
    plan = [("dev", dev, list(dict.fromkeys([*s2.windows, window])))]
    if test:
        plan.append(("test", test, list(dict.fromkeys([0, window]))))
    for split, dialogues, windows in plan:
        full: dict[str, Any] = {}
        for w in windows:
            m = score(predict(model, dialogues, kinds, w, s2.batch_size, device, f"{split} w={w}"), labels, w)
            full[str(w)] = m
            summary[split][str(w)] = {k: m[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1")}
            if w in (0, window):  # figures for the two contexts that matter; every window is in the JSON
                save_confusion_png(m["confusion"], labels, run.figure_path(f"{split}_w{w}"),
                                   title=f"{split}, {f'window {w}' if w else 'full context'}")
            logger.info("%s window %s: acc %.4f wF1 %.4f mF1 %.4f", split, w or "full", m["accuracy"],
                        m["weighted_f1"], m["macro_f1"])
        run.save_metrics(split, {"best_epoch": best["epoch"], "windows": full})
    run.save_metrics("metrics", summary)
    return summary
