"""The encoder vectors of a run, utterance by utterance, in one .npz per session.

Why: a model trained on vectors computed differently from the service's
(whole clips instead of VAD cuts, typed lines instead of ASR, photo crops
instead of detected faces) meets inputs at serving time it never saw. Recording
what the running service computed, and training on that, closes the gap by
construction. `magtkd-stream run --vectors-dir` writes these files; training
(training/stage2/served.py) reads them.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from magtkd_stream.names import MODALITIES

FORMAT = "magtkd-vectors/1"


@dataclass
class SessionVectors:
    """Final utterances of one session in publication order; absent modalities are zero rows."""

    index: np.ndarray  # (N,) int64, the utterance index of the event
    start: np.ndarray  # (N,) float64 media seconds
    end: np.ndarray  # (N,) float64
    speakers: list[str]
    texts: list[str]
    vectors: dict[str, np.ndarray]  # modality -> (N, dim) float32 (dim 0 when never present)
    present: dict[str, np.ndarray]  # modality -> (N,) bool

    def __len__(self) -> int:
        return int(self.index.shape[0])


@dataclass
class VectorRecorder:
    """A PipelineSink tap (actors/sink.py) that keeps every fused utterance's backbone vectors."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, job: Any, vectors: Mapping[str, Optional[np.ndarray]], fused: Mapping[str, Any]) -> None:
        self.rows.append({"index": int(job.index), "start": float(job.start_s), "end": float(job.end_s),
                          "speaker": str(job.speaker), "text": job.text or "",
                          "vectors": {m: None if vectors.get(m) is None else np.asarray(vectors[m], np.float32)
                                      for m in MODALITIES}})

    def session(self) -> SessionVectors:
        rows = sorted(self.rows, key=lambda r: r["index"])
        n = len(rows)
        vecs, present = {}, {}
        for m in MODALITIES:
            dims = {r["vectors"][m].shape[-1] for r in rows if r["vectors"][m] is not None}
            if len(dims) > 1:
                raise ValueError(f"{m} vectors of one session have different widths {sorted(dims)}")
            dim = dims.pop() if dims else 0
            arr = np.zeros((n, dim), np.float32)
            mask = np.zeros(n, bool)
            for i, r in enumerate(rows):
                if r["vectors"][m] is not None:
                    arr[i], mask[i] = r["vectors"][m].reshape(-1), True
            vecs[m], present[m] = arr, mask
        return SessionVectors(np.array([r["index"] for r in rows], np.int64),
                              np.array([r["start"] for r in rows], np.float64),
                              np.array([r["end"] for r in rows], np.float64),
                              [r["speaker"] for r in rows], [r["text"] for r in rows], vecs, present)

    def save(self, path: Union[str, Path], model: Optional[str] = None,
             encoders: Optional[Mapping[str, Any]] = None) -> Path:
        return save_vectors(path, self.session(), model, encoders)


def save_vectors(path: Union[str, Path], sv: SessionVectors, model: Optional[str] = None,
                 encoders: Optional[Mapping[str, Any]] = None) -> Path:
    """encoders: the config sections that computed the vectors, so a trainer can refuse vectors of other encoders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "model": model, "speakers": sv.speakers, "texts": sv.texts,
            "encoders": dict(encoders) if encoders is not None else None}
    arrays: dict[str, np.ndarray] = {"index": sv.index, "start": sv.start, "end": sv.end,
                                     "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)}
    for m in MODALITIES:
        arrays[f"{m}.vectors"], arrays[f"{m}.present"] = sv.vectors[m], sv.present[m]
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_vectors(path: Union[str, Path]) -> tuple[SessionVectors, dict[str, Any]]:
    """(vectors, meta); raises ValueError naming the file when it is not a vectors file."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            sv = SessionVectors(z["index"], z["start"], z["end"], list(meta["speakers"]), list(meta["texts"]),
                                {m: z[f"{m}.vectors"] for m in MODALITIES}, {m: z[f"{m}.present"] for m in MODALITIES})
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a vectors file written by `magtkd-stream run --vectors-dir` ({exc})") from exc
    return sv, meta
