"""Feature extraction: every utterance's stage-1 vectors, written once so stage 2 never reruns encoders.

For each split, each modality's encoder runs once per utterance (batched,
inference mode); the plain (cross-entropy) head gives "text"/"audio"/"video"
and the distilled student's head gives "audio_kd"/"video_kd". When both
students share the same backbone weights (a frozen encoder), the backbone
runs once for both heads. An utterance without the modality, or whose clip
fails to decode, is marked absent (present False) and its vectors are zeros
that MAGT never reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from magtkd_stream.config import Config, config_to_dict
from magtkd_stream.encoders.base import Encoder, UtteranceModel
from magtkd_stream.names import MODALITIES
from training.data.types import Dataset
from training.stage2.features import features_path, save_features, split_into_dialogues
from training.runs import progress as progress_bar
from training.runs import resolve_device
from training.stage1.train import Stage1Settings
from training.stage1.cache import model_device
from training.stage1.inputs import InputProblems, UttRef, has_input, iter_batches, split_refs, to_device

logger = logging.getLogger(__name__)


def same_backbone(a: Encoder, b: Encoder) -> bool:
    """True when two encoders compute the same vectors: the same object, or equal class and weights."""
    if a is b:
        return True
    if type(a) is not type(b) or a.dim != b.dim:
        return False
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


@torch.inference_mode()
def _encode(
    models: Sequence[UtteranceModel], shared: bool, refs: Sequence[UttRef], modality: str, cfg: Config,
    batch_size: int, num_workers: int, problems: InputProblems, progress: bool, desc: str,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Features (N, F) of each model and presence (N,), decoding every input once."""
    primary = models[0]
    n, f = len(refs), primary.head.proj.out_features
    feats = [np.zeros((n, f), np.float32) for _ in models]
    present = np.zeros(n, dtype=bool)
    rows = [i for i, r in enumerate(refs) if has_input(r.utt, modality, primary.encoder)]
    problems.absent(n - len(rows))
    passes = [list(range(len(models)))] if shared else [[k] for k in range(len(models))]
    for pass_i, group in enumerate(passes):
        lead = models[group[0]]
        device = model_device(lead)
        for k in group:
            models[k].eval()
        it = iter_batches(refs, rows, modality, lead.encoder, cfg, batch_size, num_workers)
        if progress:
            it = progress_bar(it, desc, total=-(-len(rows) // batch_size), unit="batch")
        for batch in it:
            for i, err in batch.failed:
                problems.failed(refs[i], err)
            if batch.tensors is None:
                continue
            out = lead.encoder(**to_device(batch.tensors, device))
            ok = out.present.cpu().numpy().astype(bool)
            idx = np.asarray(batch.rows)
            if pass_i == 0:
                present[idx] = ok
                for r, o in zip(batch.rows, ok):
                    if not o:
                        problems.encoder_absent(refs[r])
            for k in group:
                f_k, _ = models[k].head(out.vectors.to(model_device(models[k].head)))
                feats[k][idx] = f_k.float().cpu().numpy() * ok[:, None]
    for arr in feats:
        arr[~present] = 0.0
    return feats, present


def extract_features(
    cfg: Config,
    dataset: Dataset,
    models: Mapping[str, UtteranceModel],
    out_dir: str | Path,
    kd_models: Optional[Mapping[str, UtteranceModel]] = None,
    *,
    splits: Optional[Sequence[str]] = None,
    batch_size: Optional[int] = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write <out_dir>/<split>.safetensors per split (training.stage2.features format); returns split -> path.

    models: modality -> the cross-entropy model (feature kinds "text", "audio", "video");
    kd_models: modality -> the distilled student ("audio_kd", "video_kd"). The
    heads that made each kind are stored in the files too (features.load_heads).
    """
    kd_models = dict(kd_models or {})
    for kind_models, suffix in ((models, ""), (kd_models, "_kd")):
        for m, model in kind_models.items():
            if m not in MODALITIES or model.modality != m:
                raise ValueError(f"models{suffix and ' (kd)'}[{m!r}] must be a {m} model of one of "
                                 f"{list(MODALITIES)}; got a {model.modality} model")
            if model.head.proj.out_features != cfg.feature_dim:
                raise ValueError(f"{m}{suffix} head gives {model.head.proj.out_features}-d features; "
                                 f"feature_dim is {cfg.feature_dim}")
            if model.head.cls.out_features != len(dataset.labels):
                raise ValueError(f"{m}{suffix} head has {model.head.cls.out_features} classes; dataset "
                                 f"{dataset.name!r} has {len(dataset.labels)}")
    if "text" in kd_models:
        raise ValueError("there is no distilled text kind; pass the text model in models")
    settings = Stage1Settings.from_config(cfg)
    batch_size = batch_size or settings.eval_batch_size
    device = resolve_device(settings.device)
    for model in [*models.values(), *kd_models.values()]:
        model.to(device).eval()
    out = Path(out_dir)
    encoder_dims = {m: int(x.encoder.dim) for m, x in {**kd_models, **models}.items()}
    heads = {m: x.head for m, x in models.items()}
    heads.update({f"{m}_kd": x.head for m, x in kd_models.items()})
    paths: dict[str, Path] = {}
    for split in splits or list(dataset.splits):
        refs = split_refs(dataset, split)
        kinds: dict[str, np.ndarray] = {}
        present = {m: np.zeros(len(refs), dtype=bool) for m in MODALITIES}
        counts: dict[str, dict[str, int]] = {}
        for m in MODALITIES:
            group = [(k, x) for k, x in ((m, models.get(m)), (f"{m}_kd", kd_models.get(m))) if x is not None]
            if not group:
                continue
            shared = len(group) == 1 or same_backbone(group[0][1].encoder, group[1][1].encoder)
            problems = InputProblems(f"extract/{m}/{split}")
            feats, present[m] = _encode([x for _, x in group], shared, refs, m, cfg, batch_size,
                                        settings.num_workers, problems, progress, f"extract {m} {split}")
            kinds.update({k: arr for (k, _), arr in zip(group, feats)})
            counts[m] = {"present": int(present[m].sum()), **problems.counts()}
            logger.info("extract %s %s: %d of %d utterances present; left out: %s", split, m,
                        int(present[m].sum()), len(refs), problems.counts() or "none")
        dialogues = split_into_dialogues(dataset.splits[split], split, kinds, present, cfg.magt.max_speakers)
        meta = {
            "labels": list(dataset.labels), "encoder_dims": encoder_dims, "feature_dim": cfg.feature_dim,
            "profile": cfg.profile, "config": config_to_dict(cfg), "dataset": dataset.name, "split": split,
            "kinds": sorted(kinds), "counts": counts,
        }
        paths[split] = save_features(features_path(out, split), dialogues, meta, heads=heads)
        logger.info("extract %s: %d dialogues, %d utterances -> %s", split, len(dialogues), len(refs), paths[split])
    return paths
