"""Where a stage-1 batch comes from: stored backbone vectors (frozen encoder) or live inputs.

Both sources yield the same thing for a list of row indices of a split —
(rows, features, logits, keep) — so the training loop and evaluation do not
care whether the encoder runs. `keep` is False where the encoder reported the
modality absent; rows whose clip failed to decode are simply not yielded.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Iterator, Optional, Protocol, Sequence

import torch

from magtkd_stream.config import Config
from magtkd_stream.encoders.base import UtteranceModel
from training.runs import progress as progress_bar
from training.stage1.cache import Encoded, model_device
from training.stage1.inputs import InputProblems, InputTransform, UttRef, iter_batches, to_device

BatchOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # rows (cpu), feats, logits, keep (cpu)


class Source(Protocol):
    def batches(self, split: str, rows: Sequence[int], batch_size: int, train: bool,
                desc: str = "") -> Iterator[BatchOut]: ...


def _grad(train: bool):
    return nullcontext() if train else torch.inference_mode()


def forward_model(model: UtteranceModel, tensors: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """model(**batch), but each part on its own device (a parameter-free encoder may stay on the CPU)."""
    out = model.encoder(**to_device(tensors, model_device(model.encoder)))
    feats, logits = model.head(out.vectors.to(model_device(model.head)))
    return feats, logits, out.present


class CachedSource:
    """The head over backbone vectors computed once per split (the encoder never runs again)."""

    def __init__(self, model: UtteranceModel, encoded: dict[str, tuple[list[int], Encoded]],
                 sizes: dict[str, int], device: torch.device, progress: bool = True) -> None:
        self.model, self.device, self.progress = model, device, progress
        self.vectors: dict[str, torch.Tensor] = {}
        self.ok: dict[str, torch.Tensor] = {}
        for split, (rows, enc) in encoded.items():
            vec = torch.zeros(sizes[split], enc.vectors.shape[1])
            ok = torch.zeros(sizes[split], dtype=torch.bool)
            if rows:
                idx = torch.tensor(rows, dtype=torch.long)
                vec[idx], ok[idx] = enc.vectors.float(), enc.ok
            self.vectors[split], self.ok[split] = vec.to(device), ok

    def ok_rows(self, split: str) -> list[int]:
        return torch.nonzero(self.ok[split]).flatten().tolist()

    def batches(self, split: str, rows: Sequence[int], batch_size: int, train: bool,
                desc: str = "") -> Iterator[BatchOut]:
        chunks = range(0, len(rows), batch_size)
        it = progress_bar(chunks, desc, total=len(chunks), unit="batch") if desc and self.progress else chunks
        for start in it:
            idx = torch.tensor(list(rows[start : start + batch_size]), dtype=torch.long)
            with _grad(train):
                feats, logits = self.model.head(self.vectors[split][idx.to(self.device)])
            yield idx, feats, logits, self.ok[split][idx]


class LiveSource:
    """Decode, collate and encode every batch (encoders with trainable layers).

    train_transform rewrites inputs of training batches only (augmentation);
    eval_transform rewrites those of evaluation batches (scoring a split in another style).
    """

    def __init__(self, model: UtteranceModel, refs: dict[str, list[UttRef]], modality: str, cfg: Config,
                 problems: dict[str, InputProblems], num_workers: int, device: torch.device,
                 progress: bool = True, train_transform: Optional[InputTransform] = None,
                 eval_transform: Optional[InputTransform] = None) -> None:
        self.model, self.refs, self.modality, self.cfg = model, refs, modality, cfg
        self.problems, self.num_workers, self.device, self.progress = problems, num_workers, device, progress
        self.train_transform, self.eval_transform = train_transform, eval_transform

    def usable(self, split: str, rows: Sequence[int]) -> list[int]:
        """Rows not yet known to have failed or to be absent."""
        return [i for i in rows if not self.problems[split].excluded(self.refs[split][i])]

    def batches(self, split: str, rows: Sequence[int], batch_size: int, train: bool,
                desc: str = "") -> Iterator[BatchOut]:
        refs, problems = self.refs[split], self.problems[split]
        rows = self.usable(split, rows)
        it = iter_batches(refs, rows, self.modality, self.model.encoder, self.cfg, batch_size, self.num_workers,
                          self.train_transform if train else self.eval_transform)
        if desc and self.progress:
            it = progress_bar(it, desc, total=math.ceil(len(rows) / batch_size), unit="batch")
        for batch in it:
            for i, err in batch.failed:
                problems.failed(refs[i], err)
            if batch.tensors is None:
                continue
            with _grad(train):
                feats, logits, present = forward_model(self.model, batch.tensors)
            keep = present.detach().cpu().bool()
            for i, ok in zip(batch.rows, keep.tolist()):
                if not ok:
                    problems.encoder_absent(refs[i])
            yield torch.tensor(batch.rows, dtype=torch.long), feats, logits, keep


def source_rows(source: Source, split: str, rows: Sequence[int]) -> list[int]:
    """The rows a source can still deliver (after failures and absences seen so far)."""
    if isinstance(source, CachedSource):
        ok = source.ok[split]
        return [i for i in rows if bool(ok[i])]
    if isinstance(source, LiveSource):
        return source.usable(split, rows)
    return list(rows)

