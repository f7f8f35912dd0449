"""The decision layer: MAGT's fused prediction weighed against each modality's own head.

Why: MAGT's stage 2 learns mostly from corpora that carry one modality each
(MELD text, RAVDESS voice, FER faces), so on a real conversation it trusts the
transcript where the voice or the face holds the emotion, and answers below
its own best single head. A multinomial logistic regression over the log
probabilities of the fused output and of every present head (plus presence
flags), fitted on conversations the service itself has run
(training/stage2/decision.py), learns how far each source is to be believed.

It applies only to the presence patterns it was fitted on (which modalities
were present: "tav", "ta-", ...); any other pattern keeps MAGT's probabilities
unchanged, so a layer fitted where the service always hears a voice never
extrapolates to, say, offline text-only scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch

from magtkd_stream.names import MODALITIES

PROB_FLOOR = 1e-4  # events round probabilities to 4 decimals: nothing below this is ever told apart


def presence_pattern(present: Mapping[str, bool]) -> str:
    """"tav" with "-" for each absent modality, in MODALITIES order (text, audio, video)."""
    return "".join(m[0] if present.get(m) else "-" for m in MODALITIES)


def decision_features(fused: np.ndarray, heads: Mapping[str, Optional[np.ndarray]]) -> np.ndarray:
    """(F,) inputs of the layer for one utterance: log fused probs, then per modality its log probs and a flag.

    fused: (C,) MAGT's probabilities; heads: modality -> (C,) the head's own probabilities or None (absent:
    zeros and flag 0).
    """
    fused = np.asarray(fused, dtype=np.float64)
    parts = [np.log(np.clip(fused, PROB_FLOOR, 1.0))]
    for m in MODALITIES:
        p = heads.get(m)
        if p is None:
            parts.append(np.zeros(fused.shape[0] + 1))
        else:
            parts.append(np.append(np.log(np.clip(np.asarray(p, dtype=np.float64), PROB_FLOOR, 1.0)), 1.0))
    return np.concatenate(parts)


def feature_width(num_classes: int) -> int:
    return num_classes + len(MODALITIES) * (num_classes + 1)


@dataclass
class DecisionLayer:
    """softmax(weight @ features + bias) for the presence patterns it was fitted on; identity elsewhere."""

    weight: np.ndarray  # (C, F)
    bias: np.ndarray  # (C,)
    patterns: frozenset[str] = field(default_factory=frozenset)
    info: dict[str, Any] = field(default_factory=dict)  # how it was fitted (for the model card and logs)

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        self.bias = np.asarray(self.bias, dtype=np.float64)
        c = self.bias.shape[0]
        if self.weight.shape != (c, feature_width(c)):
            raise ValueError(f"decision layer weight must be ({c}, {feature_width(c)}) for {c} classes, "
                             f"got {self.weight.shape}")
        bad = [p for p in self.patterns if len(p) != len(MODALITIES)]
        if bad:
            raise ValueError(f"decision layer patterns must be {len(MODALITIES)} characters like 'tav' or 't-v', "
                             f"got {bad}")

    def applies(self, heads: Mapping[str, Optional[np.ndarray]]) -> bool:
        return presence_pattern({m: heads.get(m) is not None for m in MODALITIES}) in self.patterns

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(..., C) from decision_features rows (..., F)."""
        return features @ self.weight.T + self.bias

    def __call__(self, fused: np.ndarray, heads: Mapping[str, Optional[np.ndarray]]) -> np.ndarray:
        """(C,) final probabilities of one utterance (MAGT's own where the pattern was never fitted)."""
        if not self.applies(heads):
            return np.asarray(fused, dtype=np.float64)
        z = self.logits(decision_features(fused, heads))
        z = np.exp(z - z.max())
        return z / z.sum()

    # ------------------------------------------------------------------ checkpoint form
    def tensors(self) -> dict[str, torch.Tensor]:
        """What save_checkpoint stores under the `decision.` prefix."""
        return {"weight": torch.as_tensor(self.weight, dtype=torch.float32),
                "bias": torch.as_tensor(self.bias, dtype=torch.float32)}

    def meta(self) -> dict[str, Any]:
        """What the checkpoint's extra["decision"] holds."""
        return {"patterns": sorted(self.patterns), **self.info}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> "DecisionLayer":
        if set(tensors) != {"weight", "bias"}:
            raise ValueError(f"checkpoint decision layer needs tensors weight and bias, got {sorted(tensors)}")
        info = {k: v for k, v in meta.items() if k != "patterns"}
        return cls(tensors["weight"].double().numpy(), tensors["bias"].double().numpy(),
                   frozenset(str(p) for p in meta.get("patterns") or ()), info)
