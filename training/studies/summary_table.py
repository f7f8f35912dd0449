"""The end of a training run as one table a person reads: every score in its summary, one row each.

A run's summary is nested JSON (stage 2 per window and per source, MELD test,
the per-modality branches); this walks it and lists every entry that holds
scores, so the last thing `magtkd-train lite` prints is the same table it
writes to summary.md in the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

SCORE_KEYS: tuple[str, ...] = ("accuracy", "weighted_f1", "macro_f1")


def score_rows(summary: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(dotted name, scores) for every mapping in `summary` with accuracy and weighted_f1, in order."""
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if "accuracy" in value and "weighted_f1" in value:
                yield name, value
            else:
                yield from score_rows(value, name + " / ")


def summary_table(summary: Mapping[str, Any], title: str = "") -> str:
    """A Markdown table: what was scored, on how many utterances, accuracy, weighted F1, macro F1."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| scored | n | accuracy | weighted F1 | macro F1 |", "|---|---|---|---|---|"]
    rows = list(score_rows(summary))
    for name, s in rows:
        cells = [f"{float(s[k]):.3f}" if isinstance(s.get(k), (int, float)) else "-" for k in SCORE_KEYS]
        lines.append(f"| {name} | {s.get('n', '-')} | " + " | ".join(cells) + " |")
    if not rows:
        lines.append("| (nothing scored) | - | - | - | - |")
    return "\n".join(lines) + "\n"


def write_summary_table(run_dir: Path, summary: Mapping[str, Any], title: str) -> str:
    """summary.md in the run folder, and the same table printed: the last thing a training run shows."""
    table = summary_table(summary, title)
    (Path(run_dir) / "summary.md").write_text(table, encoding="utf-8")
    print(table, flush=True)
    return table
