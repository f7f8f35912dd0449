"""Speaker attribution: how often an utterance is given its own speaker's label, labels matched one to one.

A diarizer's labels are names it made up ("A", "B"), so each conversation's
labels are first matched to its true speakers (the assignment that agrees on
the most utterances; scipy's Hungarian solver); an utterance is attributed
right when its label maps to its speaker. Two true speakers sharing one label
can therefore be right on one of them only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def attribution(pairs: Sequence[tuple[str, str]]) -> tuple[int, dict[str, str]]:
    """(utterances attributed right, true speaker -> label) for one conversation's (truth, label) pairs."""
    from scipy.optimize import linear_sum_assignment

    truths = sorted({t for t, _ in pairs})
    labels = sorted({g for _, g in pairs})
    if not pairs:
        return 0, {}
    counts = np.zeros((len(truths), len(labels)), np.int64)
    for t, g in pairs:
        counts[truths.index(t), labels.index(g)] += 1
    rows, cols = linear_sum_assignment(-counts)
    return int(counts[rows, cols].sum()), {truths[r]: labels[c] for r, c in zip(rows, cols)}


def attribution_summary(by_conversation: dict[str, Sequence[tuple[str, str]]]) -> dict[str, Any]:
    """Attribution accuracy over conversations, with the speakers there were and the labels the service used."""
    right = total = 0
    true_counts, found_counts = [], []
    for pairs in by_conversation.values():
        if not pairs:
            continue
        ok, _ = attribution(pairs)
        right += ok
        total += len(pairs)
        true_counts.append(len({t for t, _ in pairs}))
        found_counts.append(len({g for _, g in pairs}))
    return {
        "utterances": total,
        "accuracy": round(right / total, 4) if total else None,
        "true_speakers_mean": round(float(np.mean(true_counts)), 2) if true_counts else None,
        "labels_used_mean": round(float(np.mean(found_counts)), 2) if found_counts else None,
    }
