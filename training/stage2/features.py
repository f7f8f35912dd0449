"""Utterance features on disk: the one hand-over from stage 1 (encoders) to stage 2 (MAGT).

Stage 2 never reruns encoders; it reads one .safetensors file per split. Every
dialogue's arrays are concatenated along the utterance axis with an offsets
table, so loading is a handful of reads however many dialogues there are. The
header metadata holds two JSON documents: `meta` (label names, encoder_dims,
feature_dim, profile, config — whatever the writer passes) and `index`
(dialogue ids, splits, sources, utterance ids).

Feature kinds: "text", "audio", "audio_kd", "video", "video_kd" (the `_kd`
ones come from the distilled students). A dialogue may lack a kind altogether
(a source without video); `present` says per utterance which modality exists,
and absent utterances are masked inside MAGT, never read as zeros.

The stage-1 heads that produced the features may be stored in the same file
(`heads=`), so that stage 2 can put the matching heads into the streaming
checkpoint without being told.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from magtkd_stream.config import KDConfig
from magtkd_stream.names import MODALITIES

FEATURE_KINDS: tuple[str, ...] = ("text", "audio", "audio_kd", "video", "video_kd")
IGNORE_LABEL = -100
_META_KEY = "magtkd_features"
_INDEX_KEY = "magtkd_index"
FORMAT_VERSION = 1


class FeatureFileError(ValueError):
    """A features file or a dialogue's arrays are malformed; the message names what and where."""


@dataclass
class DialogueFeatures:
    """One dialogue's utterance vectors, speakers, labels and modality presence."""

    did: str
    split: str
    source: str
    uids: list[str]
    speakers: np.ndarray  # (L,) int64, ids by first appearance within the dialogue
    labels: np.ndarray  # (L,) int64, IGNORE_LABEL = unlabelled
    feats: dict[str, np.ndarray]  # kind -> (L, D) float32, kinds among FEATURE_KINDS
    present: dict[str, np.ndarray]  # modality -> (L,) bool

    def __len__(self) -> int:
        return len(self.uids)

    def validate(self) -> None:
        """Raise FeatureFileError naming the dialogue and the array that does not fit."""
        where = f"dialogue {self.did!r}"
        n = len(self.uids)
        if n == 0:
            raise FeatureFileError(f"{where}: has no utterances")
        for name, arr in (("speakers", self.speakers), ("labels", self.labels)):
            if not isinstance(arr, np.ndarray) or arr.shape != (n,) or arr.dtype.kind not in "iu":
                raise FeatureFileError(f"{where}: {name} must be an integer array of shape ({n},)")
        if int(self.speakers.min()) < 0:
            raise FeatureFileError(f"{where}: speaker ids must be >= 0")
        unknown = set(self.feats) - set(FEATURE_KINDS)
        if unknown:
            raise FeatureFileError(f"{where}: unknown feature kind {sorted(unknown)[0]!r}; accepted: {FEATURE_KINDS}")
        for kind, arr in self.feats.items():
            if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] != n:
                raise FeatureFileError(f"{where}: feats[{kind!r}] must have shape ({n}, D)")
        if set(self.present) != set(MODALITIES):
            raise FeatureFileError(f"{where}: present must have exactly the keys {MODALITIES}")
        for m, arr in self.present.items():
            if not isinstance(arr, np.ndarray) or arr.shape != (n,) or arr.dtype != np.bool_:
                raise FeatureFileError(f"{where}: present[{m!r}] must be a bool array of shape ({n},)")
            has_kind = any(k in self.feats for k in (m, f"{m}_kd"))
            if arr.any() and not has_kind:
                raise FeatureFileError(f"{where}: {m} is marked present but there are no {m} features")


def speaker_ids(names: Sequence[str], max_speakers: int) -> np.ndarray:
    """Speaker ids by order of first appearance, wrapping past `max_speakers` (as fusion.SessionWindow does)."""
    if max_speakers < 1:
        raise ValueError(f"max_speakers must be >= 1, got {max_speakers}")
    seen: dict[str, int] = {}
    for name in names:
        if name not in seen:
            seen[name] = len(seen) % max_speakers
    return np.asarray([seen[n] for n in names], dtype=np.int64)


# ------------------------------------------------------------------------ file I/O
def save_features(
    path: str | Path,
    dialogues: Sequence[DialogueFeatures],
    meta: Mapping[str, Any],
    heads: Mapping[str, Mapping[str, torch.Tensor] | torch.nn.Module] | None = None,
) -> Path:
    """Write one split's dialogues to `path` (.safetensors), atomically.

    meta must be JSON-serialisable and hold at least "labels" (names) and
    "feature_dim"; every feature array must be (L, feature_dim). heads: optional
    stage-1 heads by feature kind ("audio_kd" is the distilled audio student's head).
    """
    from safetensors.torch import save_file

    meta = dict(meta)
    for key in ("labels", "feature_dim"):
        if key not in meta:
            raise FeatureFileError(f"features meta needs {key!r}; got keys {sorted(meta)}")
    dim = int(meta["feature_dim"])
    for d in dialogues:
        d.validate()
        for kind, arr in d.feats.items():
            if arr.shape[1] != dim:
                raise FeatureFileError(f"dialogue {d.did!r}: feats[{kind!r}] has width {arr.shape[1]}, "
                                       f"meta feature_dim is {dim}")
    n_utt = [len(d) for d in dialogues]
    offsets = np.concatenate([[0], np.cumsum(n_utt)]).astype(np.int64)
    total = int(offsets[-1])
    tensors: dict[str, torch.Tensor] = {
        "offsets": torch.from_numpy(offsets),
        "speakers": torch.from_numpy(_cat([d.speakers.astype(np.int64) for d in dialogues], (0,), np.int64)),
        "labels": torch.from_numpy(_cat([d.labels.astype(np.int64) for d in dialogues], (0,), np.int64)),
        "present": torch.from_numpy(
            _cat([np.stack([d.present[m] for m in MODALITIES], 1) for d in dialogues], (0, 3), np.bool_)
        ),
    }
    for kind in FEATURE_KINDS:
        has = np.array([kind in d.feats for d in dialogues], dtype=np.bool_)
        if not has.any():
            continue
        rows = [d.feats[kind] if kind in d.feats else np.zeros((len(d), dim), np.float32) for d in dialogues]
        tensors[f"feat.{kind}"] = torch.from_numpy(_cat([r.astype(np.float32) for r in rows], (0, dim), np.float32))
        tensors[f"has.{kind}"] = torch.from_numpy(has)
    for kind, head in (heads or {}).items():
        if kind not in FEATURE_KINDS:
            raise FeatureFileError(f"head for unknown feature kind {kind!r}; accepted: {FEATURE_KINDS}")
        sd = head.state_dict() if isinstance(head, torch.nn.Module) else head
        for k, v in sd.items():
            tensors[f"head.{kind}.{k}"] = v.detach().to("cpu").contiguous()
    index = {
        "version": FORMAT_VERSION,
        "num_utterances": total,
        "dialogues": [{"did": d.did, "split": d.split, "source": d.source, "uids": list(d.uids)} for d in dialogues],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={_META_KEY: json.dumps(meta), _INDEX_KEY: json.dumps(index)})
    tmp.replace(path)
    return path


def _cat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate(parts, 0)) if parts else np.zeros(empty_shape, dtype)


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"features file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise FeatureFileError(f"features file {path} is not a readable safetensors file: {exc}") from None
    if _META_KEY not in header or _INDEX_KEY not in header:
        raise FeatureFileError(f"{path} has no magtkd features metadata; write it with training.stage2.features.save_features")
    index = json.loads(header[_INDEX_KEY])
    if int(index.get("version", -1)) != FORMAT_VERSION:
        raise FeatureFileError(
            f"{path}: features format version {index.get('version')}; this build reads {FORMAT_VERSION}"
        )
    return tensors, json.loads(header[_META_KEY]), index


def load_features(path: str | Path) -> tuple[list[DialogueFeatures], dict[str, Any]]:
    """Read a file written by save_features: (dialogues in their saved order, meta)."""
    tensors, meta, index = _read(path)
    off = tensors["offsets"].numpy()
    entries = index["dialogues"]
    if len(off) != len(entries) + 1:
        raise FeatureFileError(f"{path}: offsets ({len(off)}) do not match {len(entries)} dialogues")
    speakers, labels = tensors["speakers"].numpy(), tensors["labels"].numpy()
    present = tensors["present"].numpy()
    kinds = [k for k in FEATURE_KINDS if f"feat.{k}" in tensors]
    feats = {k: tensors[f"feat.{k}"].numpy() for k in kinds}
    has = {k: tensors[f"has.{k}"].numpy() for k in kinds}
    out: list[DialogueFeatures] = []
    for i, e in enumerate(entries):
        a, b = int(off[i]), int(off[i + 1])
        out.append(
            DialogueFeatures(
                did=e["did"],
                split=e["split"],
                source=e["source"],
                uids=list(e["uids"]),
                speakers=speakers[a:b].copy(),
                labels=labels[a:b].copy(),
                feats={k: feats[k][a:b].copy() for k in kinds if has[k][i]},
                present={m: present[a:b, j].copy() for j, m in enumerate(MODALITIES)},
            )
        )
    return out, meta


def load_heads(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """The stage-1 heads stored in a features file, by feature kind (empty when none were stored)."""
    tensors, _, _ = _read(path)
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("head."):
            kind, name = key[len("head.") :].split(".", 1)
            heads.setdefault(kind, {})[name] = value
    return heads


# ------------------------------------------------------------------------ batching
def choose_feature_kinds(dialogues: Sequence[DialogueFeatures], kd: KDConfig) -> dict[str, str]:
    """Which stored kind feeds each MAGT modality: distilled audio when the features have it,
    distilled video only when kd.distill_video is set (and the features have it)."""
    available = {k for d in dialogues for k in d.feats}
    return {
        "text": "text",
        "audio": "audio_kd" if "audio_kd" in available else "audio",
        "video": "video_kd" if kd.distill_video and "video_kd" in available else "video",
    }


def collate_features(
    dialogues: Sequence[DialogueFeatures], kinds: Mapping[str, str], feature_dim: int
) -> dict[str, torch.Tensor]:
    """Pad dialogues into MAGT inputs.

    Returns text/audio/video (B, L, feature_dim) float32, speakers (B, L) int64,
    pad_mask (B, L) bool (True = real utterance), modality_mask (B, L, 3) bool
    (text, audio, video; False on padding) and labels (B, L) int64 (IGNORE_LABEL
    on padding and unlabelled utterances). Absent positions hold zeros that MAGT never reads.
    """
    if not dialogues:
        raise ValueError("collate_features: no dialogues to batch")
    B, L = len(dialogues), max(len(d) for d in dialogues)
    out = {m: torch.zeros(B, L, feature_dim) for m in MODALITIES}
    speakers = torch.zeros(B, L, dtype=torch.long)
    pad = torch.zeros(B, L, dtype=torch.bool)
    present = torch.zeros(B, L, len(MODALITIES), dtype=torch.bool)
    labels = torch.full((B, L), IGNORE_LABEL, dtype=torch.long)
    for i, d in enumerate(dialogues):
        n = len(d)
        pad[i, :n] = True
        speakers[i, :n] = torch.from_numpy(d.speakers.astype(np.int64))
        labels[i, :n] = torch.from_numpy(d.labels.astype(np.int64))
        for j, m in enumerate(MODALITIES):
            mask = torch.from_numpy(d.present[m])
            if not bool(mask.any()):
                continue
            kind = kinds[m]
            if kind not in d.feats:
                raise FeatureFileError(
                    f"dialogue {d.did!r} ({d.source}) has {m} present but no {kind!r} features, while other "
                    f"dialogues do; extract every source with the same stage-1 models"
                )
            arr = d.feats[kind]
            if arr.shape[1] != feature_dim:
                raise FeatureFileError(f"dialogue {d.did!r}: {kind} width {arr.shape[1]} != feature_dim {feature_dim}")
            out[m][i, :n] = torch.from_numpy(arr.astype(np.float32, copy=False))
            present[i, :n, j] = mask
    labels[labels < 0] = IGNORE_LABEL
    return {**out, "speakers": speakers, "pad_mask": pad, "modality_mask": present, "labels": labels}


def features_path(features_dir: str | Path, split: str) -> Path:
    """Where a features folder keeps one split: <features_dir>/<split>.safetensors."""
    if not split or "/" in split:
        raise ValueError(f"split must be a plain name like 'train', got {split!r}")
    return Path(features_dir) / f"{split}.safetensors"


def split_into_dialogues(
    dialogues: Sequence[Any],
    split: str,
    feats: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    max_speakers: int,
) -> list[DialogueFeatures]:
    """Cut split-wide arrays (one row per utterance, dialogues in order) into DialogueFeatures.

    `dialogues` are training.data Dialogue objects (uid, speaker, label per
    utterance); empty dialogues are skipped.
    """
    out: list[DialogueFeatures] = []
    start = 0
    for d in dialogues:
        end = start + len(d.utterances)
        if end > start:
            out.append(DialogueFeatures(
                did=d.did, split=split, source=d.source, uids=[u.uid for u in d.utterances],
                speakers=speaker_ids([u.speaker for u in d.utterances], max_speakers),
                labels=np.asarray([IGNORE_LABEL if u.label is None else int(u.label) for u in d.utterances],
                                  dtype=np.int64),
                feats={k: a[start:end] for k, a in feats.items()},
                present={m: np.asarray(present[m][start:end]).copy() for m in MODALITIES},
            ))
        start = end
    return out

