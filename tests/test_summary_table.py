"""The end-of-run table lists every scored entry of a nested summary, in order, and says when nothing was."""

from __future__ import annotations

from training.studies.summary_table import score_rows, summary_table


def test_every_scored_entry_is_a_row_and_nothing_else_is() -> None:
    summary = {"checkpoint": "x", "meld_test": {"w8": {"n": 10, "accuracy": 0.5, "weighted_f1": 0.4, "macro_f1": 0.3}},
               "dev": {"0": {"n": 3, "accuracy": 1.0, "weighted_f1": 1.0}}, "seconds": {"total": 3.0}}
    assert [name for name, _ in score_rows(summary)] == ["meld_test / w8", "dev / 0"]
    table = summary_table(summary, "run")
    assert table.startswith("## run\n") and "| meld_test / w8 | 10 | 0.500 | 0.400 | 0.300 |" in table
    assert "| dev / 0 | 3 | 1.000 | 1.000 | - |" in table and "seconds" not in table
    assert "(nothing scored)" in summary_table({"seconds": {"total": 1.0}})
