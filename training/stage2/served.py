"""Stage-2 training dialogues made of what the service computed on composed media.

Why: features extracted from the corpora (typed MELD lines, RAVDESS clips cut
by one VAD run, FER photos) are not what the running service feeds MAGT on a
real conversation: espeak-ng or actor voices through its VAD and Whisper, the
ASR's transcript inside the context prompt, faces found by its detector on a
canvas. A composed folder (training/devset/compose.py) run through `magtkd-stream run
--fast --vectors-dir` records, per utterance, exactly those backbone vectors;
here they are matched to the script by media time (training/devset/score_dev.py) and
turned into stage-2 dialogues with the run's own stage-1 heads.

Labels: an event takes the emotion of the scripted utterance it overlaps most,
unless it spans two utterances (a merge) or is the lesser piece of a split
utterance; those stay unlabelled context, as does a spurious event.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from magtkd_stream.model.speaker_norm import normalize_sequence
from magtkd_stream.streaming.vector_tap import load_vectors
from training.stage2.features import IGNORE_LABEL, MODALITIES, DialogueFeatures
from training.devset.score_dev import MIN_OVERLAP_S, conversations, overlap

log = logging.getLogger(__name__)

HeadFn = Callable[[torch.Tensor], torch.Tensor]  # backbone vectors (N, dim) -> features (N, feature_dim)


def composed_folder(served: Path) -> Path:
    """The composed folder a served run was made from, as score-dev's summary.json names it."""
    f = served / "summary.json"
    found = json.loads(f.read_text(encoding="utf-8")).get("dev") if f.is_file() else None
    if not found:
        raise FileNotFoundError(f"{served}: no summary.json naming the composed folder it was run on "
                                "(write it with `magtkd-train score-dev --vectors`)")
    return Path(found)


def event_labels(utterances: Sequence[Mapping[str, Any]], starts: np.ndarray, ends: np.ndarray,
                 neutral_cue: str = "none") -> tuple[list[int], list[str]]:
    """Per event (by start/end), the index of the utterance whose label it takes (-1: none) and its cue."""
    best_of_event: list[int] = []
    overlaps: list[float] = []
    for s, e in zip(starts, ends):
        ov = [overlap(float(s), float(e), float(u["start"]), float(u["end"])) for u in utterances]
        touching = [k for k, o in enumerate(ov) if o >= MIN_OVERLAP_S]
        if len(touching) != 1:  # spurious or a merge of two utterances: context only
            best_of_event.append(-1)
            overlaps.append(0.0)
            continue
        best_of_event.append(touching[0])
        overlaps.append(ov[touching[0]])
    chosen: dict[int, int] = {}  # utterance -> the event that overlaps it most
    for j, k in enumerate(best_of_event):
        if k >= 0 and (k not in chosen or overlaps[j] > overlaps[chosen[k]]):
            chosen[k] = j
    out, cues = [], []
    for j, k in enumerate(best_of_event):
        keep = k >= 0 and chosen.get(k) == j
        out.append(k if keep else -1)
        cues.append(str(utterances[k].get("cue_type", neutral_cue)) if keep else "")
    return out, cues


def served_dialogues(
    served: Path,
    heads: Mapping[str, HeadFn],
    kinds: Mapping[str, str],
    labels: Sequence[str],
    split: str,
    composed: Optional[Path] = None,
    speaker_norm: Optional[Mapping[str, Any]] = None,
) -> list[DialogueFeatures]:
    """One dialogue per conversation of a served run (its vectors/ and summary.json).

    speaker_norm: modality -> SpeakerNormalizer whose heads read normalised vectors;
    each conversation is one session, normalised speaker by speaker in event order.
    """
    composed = composed or composed_folder(served)
    index = {name: i for i, name in enumerate(labels)}
    out: list[DialogueFeatures] = []
    skipped = 0
    for conv in conversations(composed):
        vec_file = served / "vectors" / f"{conv['id']}.npz"
        if not vec_file.is_file():
            skipped += 1
            log.warning("%s: no vectors for conversation %s; skipped", served, conv["id"])
            continue
        sv, _ = load_vectors(vec_file)
        if len(sv) == 0:
            skipped += 1
            continue
        which, cues = event_labels(conv["utterances"], sv.start, sv.end)
        ys = np.array([index[conv["utterances"][k]["emotion"]] if k >= 0 else IGNORE_LABEL for k in which], np.int64)
        names = {s: i for i, s in enumerate(dict.fromkeys(sv.speakers))}
        feats: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        for m in MODALITIES:
            mask = sv.present[m].astype(bool)
            vecs = sv.vectors[m]
            if speaker_norm and m in speaker_norm and mask.any():
                vecs = vecs.copy()
                vecs[mask] = normalize_sequence(speaker_norm[m], vecs[mask],
                                                [sv.speakers[i] for i in np.flatnonzero(mask)])
            if mask.any():
                with torch.inference_mode():
                    f = heads[m](torch.from_numpy(np.ascontiguousarray(vecs[mask], np.float32))).float().numpy()
                arr = np.zeros((len(sv), f.shape[1]), np.float32)
                arr[mask] = f
                feats[kinds[m]] = arr
            present[m] = mask
        d = DialogueFeatures(
            did=f"served-{split}-{conv['id']}", split=split, source="served",
            uids=[f"composed/served/{conv['id']}/{int(i)}:{c}" for i, c in zip(sv.index, cues)],
            speakers=np.array([names[s] for s in sv.speakers], np.int64), labels=ys, feats=feats, present=present,
        )
        d.validate()
        out.append(d)
    labelled = sum(int((d.labels >= 0).sum()) for d in out)
    log.info("served %s: %d dialogues, %d utterances (%d labelled) from %s; %d conversations skipped", split,
             len(out), sum(len(d) for d in out), labelled, served, skipped)
    if not out:
        raise ValueError(f"{served}: no conversation has vectors; run `magtkd-train served` (or score-dev "
                         "--vectors) on the composed folder first")
    return out
