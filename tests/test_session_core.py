"""The plain streaming pieces under the actors: per-session segmentation core and cross-session batching."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from magtkd_stream.streaming.batching import MicroBatcher
from magtkd_stream.streaming.recognizer_core import FrameBuffer, SessionCore, sample_evenly
from magtkd_stream.config import VADConfig
from speech import synth_speech

pytest.importorskip("faster_whisper")
pytest.importorskip("onnxruntime")

SR = 16000


def test_jobs_carry_span_frames_context_and_arrival_time() -> None:
    gap = np.zeros(SR, dtype=np.float32)
    audio = np.concatenate([gap[: SR // 2], synth_speech("Hello, my name is John."), gap,
                            synth_speech("The weather is nice today."), gap])
    wall = {"t": 1000.0}
    core = SessionCore("s", "Ann", VADConfig(), num_frames=4, max_frames=64, clock=lambda: wall["t"])
    jobs = []
    chunk = 320
    for i in range(0, audio.size, chunk):
        t = i / SR
        if i % (SR // 10) < chunk:  # a frame every 100 ms, sent before the audio of the same moment
            core.push_frame(t, np.full((8, 8, 3), int(t * 10) % 255, np.uint8))
        wall["t"] = 1000.0 + (i + chunk) / SR  # real-time arrival
        jobs += core.push_audio(audio[i : i + chunk])
        if len(jobs) == 1 and not core.context_before(1):
            core.set_transcript(0, "Hello, my name is John.")
    jobs += core.finish()
    assert [j.index for j in jobs] == [0, 1]
    first, second = jobs
    assert first.end_s <= second.start_s
    for job in jobs:
        assert 1 <= len(job.frames) <= 4
        assert all(job.start_s <= t <= job.end_s for t in job.frame_times)
        # end_wall is when the sample at end_s arrived; the cut comes later (end-of-speech hangover).
        assert job.end_wall == pytest.approx(1000.0 + job.end_s, abs=chunk / SR + 1e-6)
        assert job.cut_wall >= job.end_wall
    assert second.context == [("Ann", "Hello, my name is John.")]
    assert second.frame_times[-1] - second.frame_times[0] > 1.0  # spread over the span, not bunched


def test_frame_buffer_stays_bounded_and_covers_long_spans() -> None:
    buf = FrameBuffer(max_frames=16, horizon_s=20.0)
    for k in range(300):  # 10 s at 30 fps
        buf.push(k / 30, np.zeros((2, 2, 3), np.uint8))
        assert len(buf.items) <= 16
    times, frames = buf.take(0.0, 10.0, 8)
    assert len(frames) == 8 and times[0] < 3.0 and times[-1] > 9.0
    assert not buf.items  # released up to the utterance end


def test_sample_evenly() -> None:
    assert sample_evenly(3, 8) == [0, 1, 2]
    assert sample_evenly(10, 4) == [0, 3, 6, 9]


def test_micro_batcher_merges_concurrent_requests_and_isolates_failures() -> None:
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("unlucky item")
        return [x * 10 for x in items]

    async def main() -> tuple[list, list]:
        b = MicroBatcher(fn, wait_s=0.05, max_batch=16)
        ok = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(4)))
        mixed = await asyncio.gather(b.submit([1]), b.submit([13]), b.submit([2]), return_exceptions=True)
        b.close()
        return ok, mixed

    ok, mixed = asyncio.run(main())
    assert ok == [[0, 1000], [10, 1010], [20, 1020], [30, 1030]]
    assert calls[0] == [0, 100, 1, 101, 2, 102, 3, 103]  # one batch for four sessions
    assert mixed[0] == [10] and mixed[2] == [20]
    assert isinstance(mixed[1], ValueError)


def test_micro_batcher_runs_background_work_only_when_no_batch_waits() -> None:
    """Face crops queued ahead of an utterance's encode must not delay it: batches jump the background queue."""
    order: list[str] = []

    def fn(items: list[str]) -> list[str]:
        order.append("batch:" + ",".join(items))
        return items

    def chore(name: str) -> str:
        time.sleep(0.02)
        order.append(name)
        return name.upper()

    async def main() -> tuple[list, list]:
        b = MicroBatcher(fn, wait_s=0.0, max_batch=16)
        chores = [asyncio.ensure_future(b.background(chore, f"crop{i}")) for i in range(6)]
        await asyncio.sleep(0.03)  # the first crop is running, five wait
        got = await b.submit(["encode"])
        done = await asyncio.gather(*chores)
        failing = await asyncio.gather(b.background(lambda: 1 / 0), return_exceptions=True)
        b.close()
        return got, [*done, *failing]

    got, done = asyncio.run(main())
    assert got == ["encode"]
    assert order.index("batch:encode") <= 2  # behind at most the crop already running (and one racing it)
    assert order[-1].startswith("crop") and len(order) == 7
    assert done[:6] == [f"CROP{i}" for i in range(6)] and isinstance(done[6], ZeroDivisionError)


def test_event_line_shows_probabilities_that_round_to_one() -> None:
    from magtkd_stream.streaming.replay import format_event

    probs = {"joy": 0.996, "anger": 0.004}
    event = {
        "type": "emotion", "session": "s", "utterance": 0, "start": 0.0, "end": 1.5, "speaker": "A",
        "text": "great", "label": "joy", "probs": probs, "status": "ok",
        "modalities": {
            "text": {"present": True, "label": "joy", "probs": probs},
            "audio": {"present": True, "label": "anger", "probs": {"joy": 0.58, "anger": 0.42}},
            "video": {"present": False, "label": None, "probs": None},
        },
        "timing": {"stages_ms": {}, "e2e_ms": 321.0},
    }
    line = format_event(event)
    assert line is not None
    assert "text joy 1.00" in line and "audio anger .42" in line and "video \u2014" in line
