"""The benchmark's own arithmetic and media preparation (the Ray job itself runs in .ci/bench-job.sh)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

from actors.bench import SessionRun, client_messages, summarize  # noqa: E402
from magtkd_stream.wire import protocol as P  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "demo" / "samples" / "conversation.mp4"


def emotion(end: float, e2e_ms: float, stages: dict, status: str = "ok") -> dict:
    return {"type": "emotion", "end": end, "status": status, "timing": {"e2e_ms": e2e_ms, "stages_ms": stages}}


def test_latency_runs_from_sending_the_audio_at_the_utterance_end_to_receiving_its_event() -> None:
    run = SessionRun("s")
    run.sent_ends = [0.02 * (i + 1) for i in range(100)]  # 2 s of 20 ms frames
    run.sent_walls = [1000.0 + 0.02 * (i + 1) + 0.005 for i in range(100)]  # each sent 5 ms after its media end
    run.events = [
        (1000.0 + 1.0 + 0.3, emotion(1.0, 290.0, {"asr": 100.0, "fusion": 10.0})),  # frame ending at 1.00 s
        (1000.0 + 1.51 + 0.5, emotion(1.51, 480.0, {"asr": 300.0, "fusion": 30.0})),  # inside the frame ending 1.52
        (1000.0 + 1.9, emotion(1.8, 0.0, {}, status="failed")),
        (1000.0 + 9.0, {"type": "transcript", "end": 1.0}),
    ]
    report = summarize([run, SessionRun("idle")])
    assert report["utterances"] == 3 and report["failed"] == 1 and report["sessions_failed"] == 0
    assert report["e2e_ms"]["n"] == 2
    assert report["e2e_ms"]["max"] == pytest.approx(1000 * (1.51 + 0.5 - 1.525), abs=0.1)
    assert min(report["e2e_ms"]["p50"], report["e2e_ms"]["p95"]) > 295.0 - 0.1  # 300 ms minus the 5 ms send lag
    assert report["stages_ms"]["asr"]["p50"] == pytest.approx(200.0)
    assert report["server_e2e_ms"]["max"] == pytest.approx(480.0)


def test_an_event_past_the_last_frame_counts_from_the_last_send_and_errors_are_reported() -> None:
    run = SessionRun("s", sent_ends=[0.02, 0.04], sent_walls=[10.0, 10.02], error="OSError: refused")
    run.events = [(10.52, emotion(0.05, 1.0, {}))]  # the flushed tail ends after the last frame's end
    report = summarize([run])
    assert report["e2e_ms"]["max"] == pytest.approx(500.0, abs=0.1)
    assert report["sessions_failed"] == 1 and "refused" in report["session_errors"][0]


def test_client_messages_are_contiguous_20ms_audio_and_decodable_jpeg_in_media_order() -> None:
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE} is missing")
    msgs = client_messages(str(SAMPLE), seconds=2.0, fps=10.0)
    assert [m.t for m in msgs] == sorted(m.t for m in msgs)
    audio = [m for m in msgs if m.audio_end is not None]
    assert len(audio) == 100 and audio[-1].audio_end == pytest.approx(2.0)
    assert all(len(P.parse_binary(m.payload).pcm) == 640 for m in audio)  # 320 PCM16 samples = 20 ms
    video = [P.parse_binary(m.payload) for m in msgs if m.audio_end is None]
    assert 5 <= len(video) <= 21 and all(v.ts <= 2.0 for v in video)
    image = cv2.imdecode(np.frombuffer(video[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[2] == 3


def test_face_detection_benchmark_reports_each_size_and_names_bad_input(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    import json

    from actors.bench_faces import main as bench_faces

    out = tmp_path / "faces.json"
    assert bench_faces([str(SAMPLE), "--frames", "3", "--out", str(out)]) == 0  # the service's detector
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["benchmark"].startswith("BlazeFace") and [r["side"] for r in report["results"]] == [None]
    first = report["results"][0]  # every line of the sample shows its speaker's face
    assert first["frames"] == 3 and first["frames_with_face"] == 3 and first["cpu_ms_per_frame"] > 0
    assert first["tracked_frames_with_face"] == 3 and first["tracked_whole_frame_searches"] >= 1
    assert bench_faces([str(SAMPLE), "--frames", "3", "--detector", "haar", "--sides", "320", "160",
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["benchmark"].startswith("Haar") and [r["side"] for r in report["results"]] == [320, 160]
    assert all(r["frames"] == 3 and r["cpu_ms_per_frame"] > 0 for r in report["results"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        bench_faces([str(SAMPLE), "--sides", "320"])
    assert exit_info.value.code == 2 and "--detector haar" in capsys.readouterr().err
    not_video = tmp_path / "notes.txt"
    not_video.write_text("no frames here", encoding="utf-8")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        bench_faces([str(not_video)])
    assert exit_info.value.code == 2 and "notes.txt" in capsys.readouterr().err


def test_cpu_meter_counts_each_named_process_and_skips_those_it_cannot_see() -> None:
    import os
    import socket

    from actors.bench_probes import CpuMeter, local_actor_pids

    health = {"actors": {"asr#0": {"state": "alive", "pid": os.getpid(), "host": socket.gethostname()},
                         "text#0": {"state": "alive", "pid": 1, "host": "another-node"},
                         "video#0": {"state": "dead", "error": "gone"}}}
    pids = local_actor_pids(health)
    assert pids == {"asr#0": os.getpid()}  # a pid on another node means nothing here
    with CpuMeter({**pids, "gone": 2**22 + 12345}) as meter:
        sum(i * i for i in range(2_000_000))  # some CPU in this process
    spent = meter.result()
    assert set(spent) == {"asr#0"} and spent["asr#0"] > 0


def test_batch_sizes_come_from_each_actors_counters() -> None:
    from actors.bench_probes import batch_sizes

    health = {"actors": {"asr#0": {"state": "alive", "batches": 4, "items": 10},
                         "text#0": {"state": "alive", "batches": 0, "items": 0},
                         "video#0": {"state": "dead", "error": "gone"}}}
    assert batch_sizes(health) == {"asr#0": {"batches": 4, "items": 10, "mean_batch": 2.5},
                                   "text#0": {"batches": 0, "items": 0, "mean_batch": None}}


def test_soak_counts_a_gap_or_a_missing_end_as_lost_and_windows_latency() -> None:
    from actors.soak import lost_events, other_cpu, rss_growth, windows

    def run(seqs: list[int], last_seq) -> SessionRun:
        r = SessionRun("s", last_seq=last_seq)
        r.events = [(0.0, {"type": "transcript", "seq": s}) for s in seqs]
        return r

    assert lost_events(run([1, 2, 3, 4], 4)) == 0
    assert lost_events(run([1, 2, 3], 5)) == 2  # the last two never arrived
    assert lost_events(run([1, 3, 4], 4)) == 4  # a gap: the whole session counts
    assert lost_events(run([1, 2, 2, 3], 3)) == 3  # a repeat
    assert lost_events(run([1, 2], None)) == 0  # never ended: a failed pass, counted there
    rows = [(t, 100.0 + t) for t in range(0, 120, 2)]
    assert [w["from_min"] for w in windows(rows, 60)] == [0.0, 1.0] and windows(rows, 60)[0]["n"] == 30
    series = [(float(t), 1000.0 + t / 10) for t in range(0, 600, 10)]
    assert rss_growth(series, 0.0, 600.0) == pytest.approx((1054.5 - 1021.0) / 1021.0, abs=1e-3)
    # the machine busy 1.5 cores, the service 1.0 core for the first minute; then the service alone
    cpu = [(float(t), 1.5 * t if t <= 60 else 90.0 + (t - 60), float(t)) for t in range(0, 121, 10)]
    shares = other_cpu(cpu, 0.0, 60, 2)
    assert [w["other_cores"] for w in shares] == [0.5, 0.0] and shares[0]["service_cores"] == 1.0


@pytest.mark.slow
def test_soak_command_runs_sessions_pass_after_pass_and_reports_no_loss(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys
    import wave

    from speech import synth_speech

    audio = np.concatenate([np.zeros(4000, np.float32), synth_speech("The weather is very nice today."),
                            np.zeros(8000, np.float32)])
    media = tmp_path / "short.wav"
    with wave.open(str(media), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "actors.soak", "--config", "tiny", "--sessions", "2",
                           "--minutes", "0.05", "--media", str(media), "--rss-every", "1", "--stagger", "0.2",
                           "--out", str(out)], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["passes"] >= 2 and report["passes_failed"] == 0 and report["lost_events"] == 0
    assert report["utterances"] >= 2 and report["failed_utterances"] == 0
    assert report["latency_windows"] and report["rss_mb"]["series"] and report["rss_mb"]["peak"] > 0
