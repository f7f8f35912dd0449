"""A run's events as a report a person reads: report.html with a timeline, latency and emotion plots.

`magtkd-stream run FILE --report DIR` writes it; any list of protocol events
(a saved JSONL) can be passed to `write_report`. The timeline has one band
per speaker and session, with the fused label above each modality's own
label, so it shows at a glance where the voice, the face and the words
disagreed; the histogram shows how long after the end of speech each answer
came; the bars show which emotions were heard, fused and per modality.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from magtkd_stream.labels import LABEL_COLOURS, OTHER_COLOUR

ROWS: tuple[str, ...] = ("fused", "text", "audio", "video")
FILES: tuple[str, ...] = ("report.html", "report.json", "timeline.png", "latency.png", "emotions.png")


def _rgb(label: Optional[str]) -> tuple[float, float, float]:
    r, g, b = LABEL_COLOURS.get(label or "", OTHER_COLOUR)
    return r / 255, g / 255, b / 255


def final_emotions(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Final emotion events (interims dropped), in session and utterance order."""
    out = [e for e in events if e.get("type") == "emotion" and e.get("final", True)]
    return sorted(out, key=lambda e: (str(e.get("session")), int(e.get("utterance", 0))))


def _label_of(event: Mapping[str, Any], row: str) -> Optional[str]:
    if row == "fused":
        return event.get("label")
    m = (event.get("modalities") or {}).get(row) or {}
    return m.get("label") if m.get("present") else None


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # renders without a GUI backend or pyplot state
    return fig


def plot_timeline(emotions: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One band per (session, speaker); in each, rows fused/text/audio/video; a bar per utterance."""
    bands = sorted({(str(e.get("session")), str(e.get("speaker") or "?")) for e in emotions})
    end = max((float(e["end"]) for e in emotions), default=1.0)
    fig = _figure(min(24.0, 4.0 + end / 4), 1.0 + 1.1 * max(1, len(bands)))
    ax = fig.add_subplot(1, 1, 1)
    yticks, ylabels = [], []
    for b, (session, speaker) in enumerate(bands):
        base = (len(bands) - 1 - b) * (len(ROWS) + 1)
        for r, row in enumerate(ROWS):
            y = base + len(ROWS) - 1 - r
            yticks.append(y)
            ylabels.append(f"{speaker} · {row}" if len(bands) == 1 or r else f"{session}/{speaker} · {row}")
            for e in emotions:
                if (str(e.get("session")), str(e.get("speaker") or "?")) != (session, speaker):
                    continue
                start, stop = float(e["start"]), float(e["end"])
                if e.get("status") != "ok":
                    ax.barh(y, stop - start, left=start, height=0.8, color="white", edgecolor="black", hatch="//")
                    continue
                label = _label_of(e, row)
                ax.barh(y, stop - start, left=start, height=0.8, color=_rgb(label) if label else "white",
                        edgecolor="black" if row == "fused" else "none", linewidth=0.6)
                if label and stop - start > 0.6:
                    ax.text((start + stop) / 2, y, label, ha="center", va="center", fontsize=7)
    ax.set_yticks(yticks, labels=ylabels, fontsize=8)
    ax.set_xlim(0, end + 0.5)
    ax.set_xlabel("media time (s)")
    ax.set_title("utterances: fused label, then each modality's own (white: absent; hatched: failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_latency(emotions: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Histogram of end of speech -> emotion event (ms), p50 and p95 marked."""
    ms = [float(e["timing"]["e2e_ms"]) for e in emotions if e.get("status") == "ok"]
    fig = _figure(6.0, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    if ms:
        ax.hist(ms, bins=min(30, max(5, len(ms) // 2)), color="#4a7ab5")
        for q, style in ((50, "-"), (95, "--")):
            v = float(np.percentile(ms, q))
            ax.axvline(v, color="black", linestyle=style, linewidth=1)
            ax.text(v, ax.get_ylim()[1] * 0.95, f" p{q} {v:.0f} ms", fontsize=8, va="top")
    ax.set_xlabel("latency: end of speech -> emotion event (ms)")
    ax.set_ylabel("utterances")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_emotions(emotions: Sequence[Mapping[str, Any]], labels: Sequence[str], path: Path) -> Path:
    """Per label: how many utterances fused to it, and how many each modality gave it."""
    counts = {row: Counter(_label_of(e, row) for e in emotions if e.get("status") == "ok") for row in ROWS}
    fig = _figure(7.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(labels))
    width = 0.8 / len(ROWS)
    hatches = {"fused": "", "text": "..", "audio": "//", "video": "xx"}
    for r, row in enumerate(ROWS):
        values = [counts[row].get(lab, 0) for lab in labels]
        bars = ax.bar(x + (r - 1.5) * width, values, width, label=row,
                      color=[_rgb(lab) for lab in labels], alpha=1.0 if row == "fused" else 0.5,
                      edgecolor="black", linewidth=0.8 if row == "fused" else 0.3, hatch=hatches[row])
        if row == "fused":
            ax.bar_label(bars, fontsize=7)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatches[row], label=row) for row in ROWS],
              fontsize=7, loc="upper left")
    ax.set_xticks(x, labels=list(labels), rotation=30, ha="right")
    ax.set_ylabel("utterances")
    ax.set_title("emotions: fused (solid) and each modality's own label")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _labels_of(emotions: Sequence[Mapping[str, Any]]) -> list[str]:
    for e in emotions:
        if e.get("probs"):
            return list(e["probs"])
    return sorted({str(e.get("label")) for e in emotions if e.get("label")})


def _row_html(e: Mapping[str, Any]) -> str:
    def cell(label: Optional[str], p: Optional[float] = None) -> str:
        if label is None:
            return "<td class=absent>absent</td>"
        r, g, b = LABEL_COLOURS.get(label, OTHER_COLOUR)
        tail = f" {p:.2f}" if p is not None else ""
        return f"<td style='background:rgba({r},{g},{b},0.35)'>{html.escape(label)}{tail}</td>"

    head = (f"<td>{html.escape(str(e.get('session')))}</td><td>{int(e.get('utterance', 0)) + 1}</td>"
            f"<td>{html.escape(str(e.get('speaker') or '?'))}</td><td>{float(e['start']):.1f}-{float(e['end']):.1f}</td>"
            f"<td>{html.escape(str(e.get('text') or ''))}</td>")
    latency = f"<td>{float(e['timing']['e2e_ms']):.0f}</td>"
    if e.get("status") != "ok":
        return f"<tr>{head}<td colspan=4 class=failed>failed: {html.escape(str(e.get('error')))}</td>{latency}</tr>"
    probs = e.get("probs") or {}
    cells = cell(e.get("label"), probs.get(e.get("label"))) + "".join(cell(_label_of(e, m)) for m in ROWS[1:])
    return f"<tr>{head}{cells}{latency}</tr>"


def write_report(events: Sequence[Mapping[str, Any]], out_dir: Path, title: str = "magtkd-stream run",
                 summary: Optional[Mapping[str, Any]] = None) -> Path:
    """Write report.html, its three PNGs and report.json (the figures in the page) into out_dir; the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    emotions = final_emotions(events)
    labels = _labels_of(emotions)
    plot_timeline(emotions, out_dir / "timeline.png")
    plot_latency(emotions, out_dir / "latency.png")
    plot_emotions(emotions, labels, out_dir / "emotions.png")
    ok = [e for e in emotions if e.get("status") == "ok"]
    ms = [float(e["timing"]["e2e_ms"]) for e in ok]
    facts = {
        "utterances": len(emotions), "failed": len(emotions) - len(ok),
        "sessions": sorted({str(e.get("session")) for e in emotions}),
        "speakers": sorted({str(e.get("speaker") or "?") for e in emotions}),
        "latency_ms_p50": round(float(np.percentile(ms, 50)), 1) if ms else None,
        "latency_ms_p95": round(float(np.percentile(ms, 95)), 1) if ms else None,
        "model": ok[0].get("model") if ok else None,
        **({"run": dict(summary)} if summary else {}),
    }
    rows = "\n".join(_row_html(e) for e in emotions) or "<tr><td colspan=10>no speech found</td></tr>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 3px 6px; }}
.absent {{ color: #999; }} .failed {{ background: #fdd; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{facts['utterances']} utterances ({facts['failed']} failed) from {len(facts['speakers'])} speaker(s) in
{len(facts['sessions'])} session(s); latency from the end of speech to the emotion event: p50
{facts['latency_ms_p50']} ms, p95 {facts['latency_ms_p95']} ms; model {html.escape(str(facts['model']))}.</p>
<h2>Timeline</h2><img src="timeline.png" alt="timeline of utterances">
<h2>Emotions</h2><img src="emotions.png" alt="emotion counts">
<h2>Latency</h2><img src="latency.png" alt="latency histogram">
<h2>Utterances</h2>
<table><tr><th>session</th><th>#</th><th>speaker</th><th>time (s)</th><th>transcript</th><th>fused (p)</th>
<th>text</th><th>audio</th><th>video</th><th>latency (ms)</th></tr>
{rows}
</table>
</body></html>
"""
    (out_dir / "report.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
