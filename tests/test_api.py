"""The Python API and the in-process backend, at the seams a user touches: the README example, bad input, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import magtkd_stream
from magtkd_stream.config import load_config
from magtkd_stream.labels import label_set
from magtkd_stream.media import AudioChunk, Frame, decode

pytestmark = pytest.mark.slow  # loads the lite models (whisper tiny.en, the text encoder, the face CNN)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "demo" / "samples" / "conversation.mp4"
LITE_LABELS = set(label_set(load_config("lite").labels))


def readme_example() -> str:
    """The first python block after the README's "Python API" heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Python API", 1)
    assert len(section) == 2, "the README lost its Python API section"
    match = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert match, "no python block in the README's Python API section"
    return match.group(1)


def sample_inputs(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The sample's first `seconds` of audio (16 kHz float32) and its first frame."""
    chunks, frame = [], None
    for item in decode(SAMPLE, video=True, max_fps=2):
        if isinstance(item, AudioChunk):
            if item.end_s > seconds:
                break
            chunks.append(item.samples)
        elif isinstance(item, Frame) and frame is None:
            frame = item.image
    assert frame is not None
    return np.concatenate(chunks), frame


def test_the_readme_python_example_runs_and_recognises_the_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    samples, frame = sample_inputs(11.0)
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), {"samples": samples, "frame_bgr": frame})
    lines = out.getvalue().splitlines()
    file_lines = [ln for ln in lines if re.match(r"^[A-Z]: (['\"]).*\1 -> \w+ [01]\.\d\d$", ln)]
    assert len(file_lines) == 8, lines  # the sample has eight utterances
    assert [ln[0] for ln in file_lines] == list("ABABABAB"), lines  # its two voices, told apart
    assert all(ln.split(" -> ")[1].split()[0] in LITE_LABELS for ln in file_lines)
    live = [ln for ln in lines if "'session': 'mic'" in ln]
    kinds = [re.search(r"'type': '(\w+)'", ln).group(1) for ln in live]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end", kinds
    assert kinds.count("emotion") >= 2, kinds  # 11 s of the sample hold two utterances and the start of a third


@pytest.fixture(scope="module")
def rec():
    with magtkd_stream.load("lite") as handle:
        yield handle


def test_a_live_session_names_bad_input_and_keeps_working(rec) -> None:
    samples, frame = sample_inputs(5.4)
    with rec.session("careful", speaker="Bo", video=True) as live:
        with pytest.raises(ValueError, match="1-D float array of mono 16 kHz"):
            live.feed_audio((samples * 32767).astype(np.int16))
        with pytest.raises(ValueError, match=r"uint8 BGR of shape \(H, W, 3\)"):
            live.feed_frame(frame[:, :, 0])
        with pytest.raises(ValueError, match="already open"):
            rec.session("careful")
        for i in range(0, samples.size, 3200):
            live.feed_audio(samples[i : i + 3200])
            live.feed_frame(frame, ts=i / 16000)
    events = live.poll()
    emotions = [e for e in events if e["type"] == "emotion" and e.get("final", True)]
    assert len(emotions) == 1 and emotions[0]["status"] == "ok", events
    assert emotions[0]["speaker"] == "Bo" and emotions[0]["modalities"]["video"]["present"]
    assert "job" in emotions[0]["text"].lower()
    with pytest.raises(RuntimeError, match="closed"):
        live.feed_audio(samples[:320])
    with pytest.raises(FileNotFoundError):
        rec.run_file(ROOT / "no-such-file.wav")


def test_run_with_the_local_backend_from_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "magtkd_stream.cli", "run", str(SAMPLE), "--fast", "--backend", "local",
           "--out", str(tmp_path / "events.jsonl")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "in this process" in done.stdout and "utterances: 8 (0 failed)" in done.stdout, done.stdout
    assert "Started a local Ray" not in done.stdout + done.stderr
    # run diarizes by default: the sample's two voices (Ana, Ben) become two speakers, stable across the file
    script = json.loads((ROOT / "demo" / "samples" / "conversation.json").read_text(encoding="utf-8"))
    truth = [u["speaker"] for u in script["utterances"]]
    speakers = [e["speaker"] for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())
                if e["type"] == "transcript"]
    assert len(speakers) == len(truth) and len(set(speakers)) == 2, speakers
    assert [speakers[truth.index(name)] for name in truth] == speakers, (truth, speakers)
    named = subprocess.run([*cmd[:-2], "--speakers", "Ana,Ben", "--out", str(tmp_path / "named.jsonl")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert named.returncode == 0, named.stderr[-2000:]
    assert [e["speaker"] for e in map(json.loads, (tmp_path / "named.jsonl").read_text().splitlines())
            if e["type"] == "transcript"] == truth, "the names go to the voices in order of appearance"
    clash = subprocess.run([*cmd, "--speakers", "Ana,Ben", "--no-diarize"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert clash.returncode == 2 and "--speakers" in clash.stderr, clash.stderr
    single = subprocess.run([*cmd[:-2], "--no-diarize", "--out", str(tmp_path / "one.jsonl")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    assert {e["speaker"] for e in map(json.loads, (tmp_path / "one.jsonl").read_text().splitlines())
            if e["type"] == "transcript"} == {"A"}
    wrong = subprocess.run([*cmd[:-2], "--address", "ray://head:10001"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert wrong.returncode == 2 and "--backend local runs without Ray" in wrong.stderr, wrong.stderr
