"""The run report: every file written, each utterance a row, failures and absent modalities shown, text escaped."""

from __future__ import annotations

import json
from pathlib import Path

from magtkd_stream.report import FILES, final_emotions, write_report

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def _emotion(session: str, i: int, speaker: str, label: str, audio: str, video: str | None, ms: float,
             text: str = "hello", status: str = "ok", final: bool = True) -> dict:
    probs = {k: (0.7 if k == label else 0.05) for k in LABELS}
    mod = {"text": {"present": True, "label": "neutral", "probs": probs},
           "audio": {"present": True, "label": audio, "probs": probs},
           "video": {"present": video is not None, "label": video, "probs": probs if video else None}}
    e = {"type": "emotion", "session": session, "utterance": i, "speaker": speaker, "start": 2.0 * i,
         "end": 2.0 * i + 1.5, "text": text, "final": final, "timing": {"e2e_ms": ms, "stages_ms": {}},
         "model": "lite:test", "status": status}
    if status == "ok":
        e.update(label=label, probs=probs, modalities=mod)
    else:
        e.update(label=None, probs=None, error="audio#0 failed during encode")
    return e


def test_the_report_has_every_utterance_and_says_what_failed_and_what_was_absent(tmp_path: Path) -> None:
    events = [
        {"type": "session_start", "session": "s1"},
        _emotion("s1", 0, "Ana", "joy", "joy", "joy", 400.0, text="<b>so</b> happy & glad"),
        _emotion("s1", 1, "Ana", "fear", "fear", None, 500.0, final=False),  # an interim: not in the report
        _emotion("s1", 1, "Ben", "anger", "anger", None, 600.0),
        _emotion("s1", 2, "Ben", "joy", "joy", "joy", 900.0, status="failed"),
        _emotion("s2", 0, "Cy", "sadness", "neutral", "sadness", 700.0),
    ]
    assert [(e["session"], e["utterance"]) for e in final_emotions(events)] == [("s1", 0), ("s1", 1), ("s1", 2),
                                                                              ("s2", 0)]
    page = write_report(events, tmp_path / "out", "a <test> run")
    assert page == tmp_path / "out" / "report.html"
    assert sorted(p.name for p in page.parent.iterdir()) == sorted(FILES)
    for png in ("timeline.png", "latency.png", "emotions.png"):
        assert (page.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = page.read_text()
    assert "&lt;b&gt;so&lt;/b&gt; happy &amp; glad" in html and "<b>so</b>" not in html
    assert "<title>a &lt;test&gt; run</title>" in html
    assert html.count("<tr><td>s1</td>") == 3 and html.count("<tr><td>s2</td>") == 1
    assert "failed: audio#0 failed during encode" in html and html.count("<td class=absent>absent</td>") == 1
    facts = json.loads((page.parent / "report.json").read_text())
    assert facts["utterances"] == 4 and facts["failed"] == 1
    assert facts["speakers"] == ["Ana", "Ben", "Cy"] and facts["sessions"] == ["s1", "s2"]
    assert facts["latency_ms_p50"] == 600.0  # of the three that succeeded: 400, 600, 700


def test_a_run_without_speech_still_gets_a_page_that_says_so(tmp_path: Path) -> None:
    page = write_report([{"type": "session_start", "session": "quiet"}], tmp_path)
    assert "no speech found" in page.read_text()
    assert json.loads((tmp_path / "report.json").read_text())["utterances"] == 0
