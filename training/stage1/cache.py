"""Encode a split once: backbone vectors of a frozen encoder, and a frozen teacher's outputs.

With the encoder frozen, every epoch would recompute identical backbone
vectors; on a CPU that is nearly all of the cost. So a frozen backbone runs
once per split (batched, inference mode, with a progress bar) and stage 1
trains only the head on the stored vectors; the KD teacher's logits and
features are computed once the same way. The vectors can also be kept on
disk in the run folder, keyed by the encoder's configuration and the
utterance ids, so a resumed or repeated run skips the encoder entirely.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from magtkd_stream.config import Config
from magtkd_stream.encoders.base import Encoder, UtteranceModel
from training.stage1.inputs import InputProblems, UttRef, has_input, iter_batches, prompt_length, to_device

if TYPE_CHECKING:
    from magtkd_stream.model.speaker_norm import SpeakerNormalizer

logger = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Per-row backbone vectors (N, dim) and whether each row really has the modality (N,)."""

    vectors: torch.Tensor
    ok: torch.Tensor  # bool; False: absent, failed to load, or reported absent by the encoder


def model_device(module: torch.nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def encode_backbone(
    encoder: Encoder,
    refs: Sequence[UttRef],
    modality: str,
    cfg: Config,
    batch_size: int,
    problems: Optional[InputProblems] = None,
    num_workers: int = 0,
    desc: str = "",
    progress: bool = True,
) -> Encoded:
    """Backbone vectors of every ref (zeros where absent), in inference mode, one encoder pass each."""
    device = model_device(encoder)
    vectors = torch.zeros(len(refs), encoder.dim)
    ok = torch.zeros(len(refs), dtype=torch.bool)
    rows = [i for i, r in enumerate(refs) if has_input(r.utt, modality, encoder)]
    if problems is not None:
        problems.absent(len(refs) - len(rows))
    if modality == "text":  # prompts of similar length share a batch: far less padding
        rows.sort(key=lambda i: prompt_length(refs[i], cfg.encoders.text.context_turns))
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(rows), desc=desc or f"encode {modality}", unit="utt",
                                          disable=not progress, leave=False) as bar:
            for batch in iter_batches(refs, rows, modality, encoder, cfg, batch_size, num_workers):
                for i, err in batch.failed:
                    if problems is not None:
                        problems.failed(refs[i], err)
                if batch.tensors is not None:
                    out = encoder(**to_device(batch.tensors, device))
                    idx = torch.tensor(batch.rows, dtype=torch.long)
                    vectors[idx] = out.vectors.float().cpu()
                    ok[idx] = out.present.cpu()
                    if problems is not None:
                        for r, p in zip(batch.rows, out.present.cpu().tolist()):
                            if not p:
                                problems.encoder_absent(refs[r])
                bar.update(len(batch.rows) + len(batch.failed))
    finally:
        encoder.train(was_training)
    return Encoded(vectors=vectors, ok=ok)


def backbone_fingerprint(encoder: Encoder, modality: str, refs: Sequence[UttRef], cfg: Config) -> str:
    """Changes whenever the vectors could: encoder class, config and weights, media settings, the inputs."""
    enc_cfg = getattr(encoder, "cfg", None)
    desc = {
        "class": type(encoder).__name__,
        "modality": modality,
        "encoder": dataclasses.asdict(enc_cfg) if dataclasses.is_dataclass(enc_cfg) else None,
        "sample_rate": cfg.encoders.audio.sample_rate,
        "audio_input": "vad-segment" if modality == "audio" and cfg.train.vad_audio else None,  # served_clip
        "num_frames": cfg.encoders.video.num_frames,
        "uids": [r.utt.uid for r in refs],
        "text": [r.utt.text for r in refs] if modality == "text" else None,
    }
    h = hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode())
    with torch.no_grad():  # a weight checksum: random-init and fine-tuned weights change the vectors too
        for key, t in encoder.state_dict().items():
            x = t.detach().float()
            h.update(key.encode())
            h.update(np.asarray([float(x.sum()), float(x.abs().sum())], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def read_cached(path: Path, shape: tuple[int, int], name: str) -> Optional[tuple[Encoded, dict[str, int]]]:
    """Vectors cached at `path` and the skip counts stored with them; None when absent or of another shape."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        vectors, ok = z["vectors"], z["ok"]
        counts = json.loads(str(z["counts"])) if "counts" in z.files else {}
    if vectors.shape != shape:
        logger.warning("%s: cache %s has shape %s, expected %s; recomputing", name, path, vectors.shape, shape)
        return None
    logger.info("%s: backbone vectors read from cache %s", name, path)
    return Encoded(torch.from_numpy(vectors), torch.from_numpy(ok)), counts


def write_cached(path: Path, enc: Encoded, counts: Optional[dict[str, int]] = None) -> None:
    """Write vectors (and skip counts) to `path` atomically: a killed run never leaves half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, vectors=enc.vectors.numpy(), ok=enc.ok.numpy(), counts=np.asarray(json.dumps(counts or {})))
    tmp.replace(path)


def cached_backbone(
    encoder: Encoder,
    refs: Sequence[UttRef],
    modality: str,
    cfg: Config,
    batch_size: int,
    cache_dir: Optional[Path],
    name: str,
    problems: Optional[InputProblems] = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Encoded:
    """encode_backbone, read from / written to cache_dir/<name>-<fingerprint>.npz when cache_dir is set.

    Only valid for an encoder whose weights are not trained (the caller checks).
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{name}-{backbone_fingerprint(encoder, modality, refs, cfg)}.npz"
        cached = read_cached(path, (len(refs), encoder.dim), name)
        if cached is not None:
            enc, counts = cached
            if problems is not None:
                problems.report.skipped.update({k: int(v) for k, v in counts.items()})
            return enc
    local = InputProblems(name)
    enc = encode_backbone(encoder, refs, modality, cfg, batch_size, local, num_workers, name, progress)
    if problems is not None:
        problems.report.skipped.update(local.report.skipped)
        problems.failed_uids |= local.failed_uids
        problems.absent_uids |= local.absent_uids
    if path is not None:
        write_cached(path, enc, local.counts())
    return enc


@torch.inference_mode()
def apply_head(model: UtteranceModel, enc: Encoded, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F), logits (N, C)) of a head over stored backbone vectors; zeros where absent."""
    head = model.head
    was_training = head.training
    head.eval()
    device = model_device(head)
    feats, logits = [], []
    try:
        for start in range(0, enc.vectors.shape[0], batch_size):
            f, z = head(enc.vectors[start : start + batch_size].to(device))
            feats.append(f.float().cpu())
            logits.append(z.float().cpu())
    finally:
        head.train(was_training)
    if not feats:
        c = head.cls.out_features
        return torch.zeros(0, head.proj.out_features), torch.zeros(0, c)
    mask = enc.ok.unsqueeze(1).float()
    return torch.cat(feats) * mask, torch.cat(logits) * mask


@dataclass
class TeacherOutputs:
    """A frozen teacher's view of the student's training rows: (N, F), (N, C), (N,) bool."""

    feats: torch.Tensor
    logits: torch.Tensor
    ok: torch.Tensor


def teacher_outputs(
    teacher: UtteranceModel,
    refs: Sequence[UttRef],
    cfg: Config,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
) -> TeacherOutputs:
    """The teacher's features and logits on the same utterances, computed once (it never changes)."""
    problems = InputProblems(f"teacher/{teacher.modality}")
    enc = encode_backbone(teacher.encoder, refs, teacher.modality, cfg, batch_size, problems, num_workers,
                          f"teacher {teacher.modality}", progress)
    feats, logits = apply_head(teacher, enc)
    counts = problems.counts()
    if counts:
        logger.info("teacher %s: no KD signal for %s of %d training utterances",
                    teacher.modality, counts, len(refs))
    return TeacherOutputs(feats=feats, logits=logits, ok=enc.ok)


def speaker_order(refs: Sequence[UttRef], seed: int) -> list[int]:
    """The order a session would meet these utterances: dialogues shuffled (seeded), each in its own order."""
    dialogues: dict[int, int] = {}
    for r in refs:
        dialogues.setdefault(id(r.dialogue), len(dialogues))
    perm = np.random.default_rng(seed).permutation(len(dialogues))
    return sorted(range(len(refs)), key=lambda i: (int(perm[dialogues[id(refs[i].dialogue)]]), refs[i].pos))


def normalize_by_speaker(enc: Encoded, refs: Sequence[UttRef], norm: "SpeakerNormalizer", seed: int) -> Encoded:
    """Backbone vectors normalised per speaker as the service does (magtkd_stream/model/speaker_norm.py).

    Each speaker's utterances are taken in speaker_order, causally: an utterance
    is normalised by that speaker's earlier ones only. Rows without the modality
    stay zero and do not enter the statistics.
    """
    from magtkd_stream.model.speaker_norm import normalize_sequence

    order = [i for i in speaker_order(refs, seed) if bool(enc.ok[i])]
    out = enc.vectors.clone().float()
    if order:
        out[order] = torch.from_numpy(normalize_sequence(norm, out[order].numpy(),
                                                         [refs[i].utt.speaker for i in order]))
    return Encoded(out, enc.ok)


def prior_of(enc: Encoded, weight: float) -> "SpeakerNormalizer":
    """The normaliser whose prior is the mean of the rows that have the modality (the train split's)."""
    from magtkd_stream.model.speaker_norm import SpeakerNormalizer

    rows = enc.vectors[enc.ok.bool()].float()
    if rows.shape[0] == 0:
        raise ValueError("speaker normalisation needs train vectors to take the prior mean from; there are none")
    return SpeakerNormalizer(rows.mean(0).numpy(), weight)
