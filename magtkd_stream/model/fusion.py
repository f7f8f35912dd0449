"""Streaming fusion: the per-session sliding window and the trained heads + MAGT that read it.

A live stream has no future, so each new utterance is predicted from the last
W utterances of its session with MAGT's causal window mask — the same mask the
model was trained and evaluated with. Modalities an utterance lacks (no face,
no transcript) stay absent in the window and are masked inside MAGT.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from magtkd_stream.model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, model_id
from magtkd_stream.config import Config
from magtkd_stream.encoders.base import ModalityHead
from magtkd_stream.model.decision import DecisionLayer
from magtkd_stream.names import MODALITIES
from magtkd_stream.model.magt import MAGT
from magtkd_stream.names import UNTRAINED_MODEL_ID
from magtkd_stream.model.speaker_norm import SpeakerNormalizer

log = logging.getLogger(__name__)


def ignored_magt_settings(configured: Any, trained: Any) -> dict[str, tuple[Any, Any]]:
    """{field: (configured, checkpoint's)} for every magt setting where the profile differs from a checkpoint.

    A checkpoint carries the MAGT it was trained as; `--set magt.window=4` on a
    profile with a checkpoint would otherwise be silently without effect.
    """
    a, b = dataclasses.asdict(configured), dataclasses.asdict(trained)
    return {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}



@dataclass
class WindowItem:
    """One utterance in a session window: its speaker id and per-modality feature vectors."""

    speaker: int
    features: dict[str, np.ndarray | None]  # modality -> (feature_dim,) or None when absent


class SessionWindow:
    """The last W utterances of one session, with speaker names mapped to MAGT speaker ids.

    Speaker ids follow order of first appearance in the session (as training does
    within a dialogue); past `max_speakers` distinct names, ids wrap around.
    """

    def __init__(self, window: int, max_speakers: int,
                 normalizers: Mapping[str, SpeakerNormalizer] | None = None) -> None:
        if window < 1:
            raise ValueError(f"a streaming window needs at least 1 utterance, got {window}")
        self.window = window
        self.max_speakers = max_speakers
        self.items: deque[WindowItem] = deque(maxlen=window)
        self._speakers: dict[str, int] = {}
        self.normalizers: dict[str, SpeakerNormalizer] = dict(normalizers or {})

    def normalize(self, speaker: str, modality: str, vector: np.ndarray, commit: bool) -> np.ndarray:
        """The backbone vector the head reads: normalised by this speaker's earlier utterances, if configured.

        commit=False (an interim) leaves the statistics untouched.
        """
        norm = self.normalizers.get(modality)
        if norm is None:
            return vector
        return norm(speaker, vector) if commit else norm.peek(speaker, vector)

    def speaker_id(self, name: str) -> int:
        if name not in self._speakers:
            self._speakers[name] = len(self._speakers) % self.max_speakers
        return self._speakers[name]

    def push(self, speaker: str, features: Mapping[str, np.ndarray | None]) -> None:
        self.items.append(WindowItem(self.speaker_id(speaker), {m: features.get(m) for m in MODALITIES}))

    def with_pending(self, speaker: str, features: Mapping[str, np.ndarray | None]) -> "SessionWindow":
        """A copy with one more utterance pushed; this window is untouched (interim predictions)."""
        copy = SessionWindow(self.window, self.max_speakers)
        copy.items = deque(self.items, maxlen=self.window)
        copy._speakers = dict(self._speakers)
        copy.push(speaker, features)
        return copy


@dataclass
class FusionResult:
    probs: np.ndarray  # (C,) fused
    modality_probs: dict[str, np.ndarray | None] = field(default_factory=dict)  # stage-1 heads alone


class FusionModel(nn.Module):
    """The trained part of the recognizer: one head per modality and MAGT.

    Heads turn encoder backbone vectors into feature_dim features (and stage-1
    logits); MAGT fuses the features of a window of utterances.
    """

    def __init__(self, cfg: Config, encoder_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_dim = cfg.feature_dim
        self.heads = nn.ModuleDict(
            {m: ModalityHead(int(encoder_dims[m]), cfg.feature_dim, num_classes) for m in MODALITIES}
        )
        self.magt = MAGT(cfg.magt, cfg.feature_dim, num_classes)
        # Softmax temperatures fitted on dev (training/stage2/calibration.py); 1.0 = as trained.
        self.temperature: dict[str, float] = {m: 1.0 for m in (*MODALITIES, "fused")}
        # Per-speaker running normalisation of backbone vectors before the head, by modality (the
        # heads were trained on vectors normalised this way); each session gets fresh statistics.
        self.speaker_norm: dict[str, SpeakerNormalizer] = {}
        # MAGT weighed against the heads (magtkd_stream/model/decision.py); None: MAGT's output is final.
        self.decision: DecisionLayer | None = None
        self.labels: list[str] = []  # class names, set when loaded from a checkpoint
        self.model_id = UNTRAINED_MODEL_ID  # the checkpoint's id once loaded (FusionModel.load)

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint) -> "FusionModel":
        """Rebuild exactly what was trained, from the checkpoint's own config and dims."""
        dims = ck.extra.get("encoder_dims")
        if not isinstance(dims, dict) or set(dims) != set(MODALITIES):
            raise ValueError("checkpoint has no encoder_dims for text, audio and video; cannot rebuild heads")
        model = cls(ck.config, dims, len(ck.labels))
        for m in MODALITIES:
            model.heads[m].load_state_dict(ck.state_dict(f"{m}.head"))
        model.magt.load_state_dict(ck.state_dict("magt"))
        model.labels = list(ck.labels)
        temps = ck.extra.get("temperature") or {}
        for k, t in temps.items():
            if k in model.temperature and isinstance(t, (int, float)) and t > 0:
                model.temperature[k] = float(t)
        for m, entry in (ck.extra.get("speaker_norm") or {}).items():
            if m not in MODALITIES:
                raise ValueError(f"checkpoint speaker_norm names modality {m!r}; expected one of {MODALITIES}")
            norm = SpeakerNormalizer.from_dict(entry)
            if norm.prior_mean.size != int(dims[m]):
                raise ValueError(f"checkpoint speaker_norm for {m} has width {norm.prior_mean.size}, "
                                 f"the {m} head reads {dims[m]}")
            model.speaker_norm[m] = norm
        decision = ck.state_dict("decision")
        if decision:
            model.decision = DecisionLayer.from_parts(decision, ck.extra.get("decision") or {})
            if model.decision.bias.shape[0] != len(ck.labels):
                raise ValueError(f"checkpoint decision layer has {model.decision.bias.shape[0]} classes, "
                                 f"the labels {len(ck.labels)}")
        return model.eval()

    @classmethod
    def load(cls, path: str | Path, cfg: Config, encoder_dims: Mapping[str, int]) -> "FusionModel":
        """The trained heads + MAGT of checkpoint `path`, checked against the profile that serves them.

        Raises CheckpointError naming the mismatch when the file is foreign (labels,
        profile) or was trained on other encoder widths or another Whisper window;
        warns when profile magt settings are overridden by what the checkpoint holds.
        The model carries `labels` and `model_id` (the file's digest and profile).
        """
        from magtkd_stream.labels import label_set

        ck = load_checkpoint(path, expect_labels=label_set(cfg.labels), expect_profile=cfg.profile)
        trained = {m: int(d) for m, d in (ck.extra.get("encoder_dims") or {}).items()}
        wrong = {m: (trained.get(m), int(d)) for m, d in encoder_dims.items() if trained.get(m) != int(d)}
        if wrong:
            raise CheckpointError(
                f"checkpoint {path} was trained on encoder widths {trained}, but the configured encoders give "
                f"{dict(encoder_dims)} (mismatch: {wrong}); use the checkpoint's profile"
            )
        trained_window, window_now = ck.config.encoders.asr.window_seconds, cfg.encoders.asr.window_seconds
        if ck.config.encoders.audio.kind == "whisper" and trained_window != window_now:
            raise CheckpointError(
                f"checkpoint {path} was trained on Whisper vectors of a {trained_window:g} s window, but "
                f"encoders.asr.window_seconds is {window_now:g}; set it to {trained_window:g}"
            )
        ignored = ignored_magt_settings(cfg.magt, ck.config.magt)
        if ignored:
            log.warning(
                "MAGT is rebuilt from checkpoint %s, so the configured magt settings %s are ignored (the "
                "checkpoint has %s); set stream.window to change the context window", path,
                {k: v[0] for k, v in ignored.items()}, {k: v[1] for k, v in ignored.items()},
            )
        model = cls.from_checkpoint(ck)
        model.model_id = model_id(path, ck.profile)
        return model

    def session_normalizers(self) -> dict[str, SpeakerNormalizer]:
        """Fresh per-speaker normalisers for a new session (empty when the checkpoint has none)."""
        return {m: n.fresh() for m, n in self.speaker_norm.items()}

    @torch.inference_mode()
    def head(self, modality: str, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, feature_dim), calibrated stage-1 logits (B, C)) from backbone vectors (B, dim)."""
        feats, logits = self.heads[modality](vectors)
        return feats, logits / self.temperature[modality]

    def decide(self, fused: np.ndarray, heads: Mapping[str, np.ndarray | None]) -> np.ndarray:
        """The final (C,) probabilities of one utterance from MAGT's and the present heads' probabilities."""
        return np.asarray(fused) if self.decision is None else self.decision(fused, heads)

    @torch.inference_mode()
    def predict_last(self, windows: Sequence[SessionWindow]) -> list[np.ndarray]:
        """Fused class probabilities of the newest utterance of each window, batched across sessions."""
        if not windows:
            return []
        lengths = [len(w.items) for w in windows]
        if min(lengths) == 0:
            raise ValueError("every window needs at least one utterance to predict")
        b, l, d = len(windows), max(lengths), self.feature_dim
        feats = {m: torch.zeros(b, l, d) for m in MODALITIES}
        present = torch.zeros(b, l, len(MODALITIES), dtype=torch.bool)
        speakers = torch.zeros(b, l, dtype=torch.long)
        pad = torch.zeros(b, l, dtype=torch.bool)
        for i, w in enumerate(windows):
            for j, item in enumerate(w.items):
                pad[i, j] = True
                speakers[i, j] = item.speaker
                for k, m in enumerate(MODALITIES):
                    vec = item.features.get(m)
                    if vec is not None:
                        feats[m][i, j] = torch.as_tensor(vec, dtype=torch.float32)
                        present[i, j, k] = True
        window = max(w.window for w in windows)
        out = self.magt(feats["text"], feats["audio"], feats["video"], speakers, pad, present, window=window)
        probs = (out.logits / self.temperature["fused"]).softmax(-1)
        return [probs[i, lengths[i] - 1].numpy() for i in range(b)]
