"""`run` says how far it is while no utterance comes, and stays quiet while they do."""

from __future__ import annotations

import asyncio

from magtkd_stream.streaming.replay import _progress


def test_progress_lines_come_only_while_no_utterance_arrives() -> None:
    lines: list[str] = []
    events: list[dict] = []

    async def main() -> None:
        task = asyncio.create_task(_progress(events, 75.0, lambda: 12.5, lines.append, every_s=0.05))
        await asyncio.sleep(0.08)  # one quiet period
        events.append({"type": "emotion"})
        await asyncio.sleep(0.05)  # an utterance came in this period: no line
        await asyncio.sleep(0.05)  # quiet again
        task.cancel()

    asyncio.run(main())
    assert lines[0] == "... 00:12.5 of 01:15.0 replayed, 0 utterance(s) so far"
    assert lines[-1] == "... 00:12.5 of 01:15.0 replayed, 1 utterance(s) so far"
    assert 2 <= len(lines) <= 3


def test_a_bad_checkpoint_is_one_clear_line_before_ray_starts(tmp_path) -> None:
    import subprocess
    import sys
    import time
    import wave
    from pathlib import Path

    import numpy as np

    clip = tmp_path / "clip.wav"
    with wave.open(str(clip), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(16000, "<i2").tobytes())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all" * 10)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "magtkd_stream.cli", "run", str(clip), "--config", "tiny",
                           "--set", f"checkpoint={bad}"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("magtkd-stream run:")]
    assert errors == [f"magtkd-stream run: checkpoint {bad} is not a readable safetensors file: "
                      + errors[0].split("safetensors file: ", 1)[1]] and "Traceback" not in proc.stderr
    assert "ray" not in proc.stderr.lower() and time.monotonic() - t0 < 60  # refused before Ray started
