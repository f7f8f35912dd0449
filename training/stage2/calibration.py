"""Temperature calibration: fused and per-modality probabilities that mean what they say.

A subscriber reads "anger 0.91" as 91 % sure. Heads and MAGT trained with
cross-entropy (and class weights) are usually over- or under-confident, so one
temperature per output is fitted on dev logits (minimising negative
log-likelihood; argmax, and so accuracy, is unchanged) and stored in the
checkpoint, which the service applies before its softmax. Expected
calibration error (ECE, equal-width confidence bins) says how far off they were.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MIN_T, MAX_T = 0.05, 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray, steps: int = 200) -> float:
    """The T > 0 minimising NLL of softmax(logits / T) on (N, C) logits and (N,) labels; 1.0 with no data."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if z.ndim != 2 or y.shape != z.shape[:1]:
        raise ValueError(f"fit_temperature: logits (N, C) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if z.shape[0] == 0:
        return 1.0
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(min(MAX_T, max(MIN_T, t))) if math.isfinite(t) else 1.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Sum over confidence bins of |accuracy - confidence| weighted by the bin's share of rows."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.shape[0] == 0:
        return 0.0
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(float((pred[sel] == y[sel]).mean()) - float(conf[sel].mean()))
    return float(ece)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibrate(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Fitted temperature and dev ECE before and after."""
    t = fit_temperature(logits, labels)
    return {"temperature": round(t, 4), "ece_before": round(expected_calibration_error(softmax(logits), labels), 4),
            "ece_after": round(expected_calibration_error(softmax(logits, t), labels), 4), "n": int(len(labels))}
