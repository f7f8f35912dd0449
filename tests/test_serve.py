"""`magtkd-stream serve` as a user runs it: a subprocess with a real Ray, real websocket clients, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
from websockets.asyncio.client import connect  # noqa: E402

from magtkd_stream.wire import events as E  # noqa: E402
from magtkd_stream.wire import protocol as P  # noqa: E402
from speech import synth_speech  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "serve-test-token"
SENTENCE = "I am so happy to see you again today."
URL_LINE = re.compile(r"serving (ws://[^ ]+/)")


def tagged_env(tag: str) -> dict[str, str]:
    """The test's environment without client tokens, plus a tag every process the server starts inherits."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAGTKD_TOKENS", "RAY_ADDRESS")}
    # RAY_ADDRESS=local: a Ray of the server's own even when another cluster (`ray start`) runs on this machine.
    env.update(MAGTKD_TEST_TAG=tag, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", RAY_ADDRESS="local")
    return env


def tagged_processes(tag: str) -> list[Any]:
    """Live processes carrying the tag: the server and everything it spawned (Ray's raylet, workers, ...)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("MAGTKD_TEST_TAG") == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_gone(tag: str, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    left = tagged_processes(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = tagged_processes(tag)
    return left


def cli(*args: str, tag: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magtkd_stream.cli", "serve", *args], cwd=ROOT, env=tagged_env(tag),
                          capture_output=True, text=True, timeout=timeout)


class Server:
    """A `serve --config tiny` subprocess in its own process group; its stdout is read by a thread."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "magtkd_stream.cli", "serve", "--config", "tiny", "--port", "0", "--token", TOKEN,
             "--metrics-port", "0"],
            cwd=ROOT, env=tagged_env(self.tag), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_line(self, pattern: re.Pattern, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                m = pattern.search(line)
                if m:
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern.pattern!r}; stdout {self.lines}, stderr {self.stderr[-15:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for proc in tagged_processes(self.tag):  # Ray's processes left by a killed server
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


METRICS_LINE = re.compile(r"^metrics on (http://[^/]+)/metrics")


def http_get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8")


def speech_with_pauses() -> np.ndarray:
    silence = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([silence, synth_speech(SENTENCE), silence, silence])
    return np.round(np.clip(audio, -1, 32767 / 32768) * 32768).astype("<i2")


async def recv(ws: Any, timeout: float = 30.0) -> dict[str, Any]:
    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    E.validate_event(msg)
    return msg


async def one_session(url: str, session: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Publish synthesized speech as a real client; return the publisher's `ended` and the subscriber's events."""
    sub = await connect(url)
    await sub.send(json.dumps({"type": "hello", "version": 1, "token": TOKEN, "role": "subscriber",
                               "session": session}))
    assert (await recv(sub))["type"] == "welcome"
    pub = await connect(url)
    await pub.send(json.dumps({"type": "hello", "version": 1, "token": TOKEN, "role": "publisher",
                               "session": session, "sample_rate": 16000, "speaker": "Ann"}))
    assert (await recv(pub))["type"] == "welcome"
    pcm = speech_with_pauses()
    for i in range(0, pcm.size, 320):  # 20 ms frames, a little faster than real time
        await pub.send(P.encode_audio(pcm[i : i + 320]))
        await asyncio.sleep(0.005)
    await pub.send(json.dumps({"type": "end", "version": 1}))
    ended: Optional[dict[str, Any]] = None
    while ended is None:
        msg = await recv(pub, 60.0)
        assert msg["type"] != "error", msg
        if msg["type"] == "ended":
            ended = msg
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != "session_end":
        events.append(await recv(sub, 30.0))
    await asyncio.gather(pub.close(), sub.close())
    return ended, events


@pytest.mark.slow
def test_serve_runs_a_websocket_session_and_stops_cleanly_on_sigint() -> None:
    server = Server()
    try:
        url = server.wait_line(URL_LINE, timeout=75.0).group(1)
        server.wait_line(re.compile(r"^health: ok"), timeout=10.0)
        metrics_url = server.wait_line(METRICS_LINE, timeout=10.0).group(1)
        health = json.loads(http_get(metrics_url + "/healthz")[1])
        assert health["ok"] and health["gateway"] == "serving" and health["pipeline"]["ok"], health
        assert set(health["pipeline"]["actors"]) == {"asr#0", "text#0", "audio#0", "video#0", "fusion#0"}
        ended, events = asyncio.run(asyncio.wait_for(one_session(url, "talk"), 60.0))
        status, text = http_get(metrics_url + "/metrics")
        emotions = sum(e["type"] == "emotion" for e in events)
        assert status == 200 and f'magtkd_events_total{{type="emotion"}} {float(emotions)}' in text, text
        assert f"magtkd_e2e_latency_ms_count {float(emotions)}" in text
        assert 'magtkd_stage_latency_ms_count{stage="asr"}' in text and 'magtkd_sessions{state="ended"} 1.0' in text

        kinds = [e["type"] for e in events]
        assert kinds[0] == "session_start" and kinds[-1] == "session_end"
        assert "transcript" in kinds and "emotion" in kinds, kinds
        assert ended["last_seq"] == events[-1]["seq"]  # the publisher is told the subscriber's last event
        emotion = next(e for e in events if e["type"] == "emotion")
        assert emotion["status"] == "ok" and emotion["speaker"] == "Ann" and emotion["label"] in emotion["probs"]
        assert 0.3 < emotion["start"] < emotion["end"] < len(speech_with_pauses()) / 16000
        assert events[-1]["reason"] == "end"

        assert tagged_processes(server.tag), "the tag must reach the server's processes, or the check proves nothing"
        from actors.serve import STOP_BOUND_S

        sent = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=STOP_BOUND_S + 20) == 0, server.stderr[-20:]
        took = time.monotonic() - sent
        assert took < STOP_BOUND_S + 10, f"serve took {took:.1f} s to end after SIGINT"
        assert server.lines[-1] == "stopped"  # printed once the actors are gone, not before
        left = wait_gone(server.tag, timeout=3.0)
        assert not left, f"left running after SIGINT: {[p.info for p in left]}"
    finally:
        server.kill()


def test_serve_without_any_token_refuses_to_start() -> None:
    tag = uuid.uuid4().hex
    out = cli("--config", "tiny", "--port", "0", tag=tag)
    assert out.returncode == 2
    assert "--token" in out.stderr and "MAGTKD_TOKENS" in out.stderr and "Traceback" not in out.stderr
    assert "serving" not in out.stdout
    assert not wait_gone(tag, timeout=5.0)


def test_serve_mic_without_a_microphone_fails_clearly_and_leaves_nothing_running() -> None:
    pyaudio = pytest.importorskip("pyaudio")
    pa = pyaudio.PyAudio()
    try:
        pa.get_default_input_device_info()
        pytest.skip("this machine has a microphone; the no-microphone path cannot be exercised here")
    except OSError:
        pass
    finally:
        pa.terminate()
    tag = uuid.uuid4().hex
    out = cli("--config", "tiny", "--port", "0", "--token", TOKEN, "--mic", tag=tag)
    assert out.returncode not in (0, None)
    assert "--mic" in out.stderr and "microphone" in out.stderr and "Traceback" not in out.stderr
    assert "serving" not in out.stdout
    assert not wait_gone(tag, timeout=5.0)


class ThreadMic:
    """Stands in for the PyAudio microphone: emits a known signal from its own thread, as PyAudio's callback does."""

    name = "test microphone"

    def __init__(self, signal_: np.ndarray, chunk: int = 320) -> None:
        self.signal, self.chunk = signal_, chunk
        self.thread: Optional[threading.Thread] = None
        self.closed = threading.Event()

    def start(self, emit: Any) -> None:
        def run() -> None:
            for i in range(0, self.signal.size, self.chunk):
                if self.closed.is_set():
                    return
                emit(self.signal[i : i + self.chunk])
                time.sleep(0.001)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join(5)  # every chunk is out before close returns (the real device stops at once)
        self.closed.set()


class RecordingSink:
    """Stands in for the pipeline: records what the local session hands it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def open(self, session: str, speaker: Optional[str], video: bool, conversation: Optional[str] = None,
                   names: Sequence[str] = ()) -> None:
        self.calls.append(("open", (session, video)))

    async def audio(self, session: str, samples: np.ndarray, wall: Optional[float] = None) -> None:
        self.calls.append(("audio", (samples.copy(), wall)))

    async def video(self, session: str, ts: float, frame: np.ndarray) -> None:
        self.calls.append(("video", ts))

    async def end(self, session: str) -> None:
        self.calls.append(("end", session))


def test_local_session_feeds_every_captured_sample_in_order_then_ends_on_the_bus() -> None:
    from actors.local_devices import LocalSession
    from magtkd_stream.wire.bus import BusEvent, EventBus

    signal_ = np.random.default_rng(1).uniform(-0.5, 0.5, 16000).astype(np.float32)

    async def scenario() -> tuple[RecordingSink, list[dict[str, Any]], float, float]:
        bus, sink = EventBus(validate=True), RecordingSink()
        sub = bus.subscribe("*")
        local = LocalSession(sink, bus, "desk", ThreadMic(signal_), None)
        before = time.time()
        await local.start()
        await asyncio.sleep(0.3)
        await local.stop()
        after = time.time()
        events = []
        while (item := sub.get_nowait()) is not None:
            if isinstance(item, BusEvent):
                events.append(item.data)
        return sink, events, before, after

    sink, events, before, after = asyncio.run(asyncio.wait_for(scenario(), 20))
    kinds = [c[0] for c in sink.calls]
    assert kinds[0] == "open" and kinds[-1] == "end" and set(kinds[1:-1]) == {"audio"}
    received = np.concatenate([c[1][0] for c in sink.calls if c[0] == "audio"])
    np.testing.assert_array_equal(received, signal_)  # nothing lost, duplicated or reordered
    walls = [c[1][1] for c in sink.calls if c[0] == "audio"]
    assert all(before <= w <= after for w in walls) and walls == sorted(walls)  # capture times, not pump times
    assert [e["type"] for e in events] == ["session_start", "session_end"]
    assert events[-1]["reason"] == "end" and events[-1]["audio_seconds"] == pytest.approx(1.0)


def test_stopping_is_bounded_even_when_ray_hangs() -> None:
    import subprocess
    import sys

    from actors.serve import stop_within

    class Hangs:  # stands in for a pipeline whose Ray shutdown never returns
        def stop(self) -> None:
            time.sleep(60)

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        t0 = time.monotonic()
        assert stop_within(Hangs(), 0.5) is False  # type: ignore[arg-type]
        child.wait(timeout=5)  # killed (and reaped) by stop_within: it would sleep for a minute otherwise
        assert time.monotonic() - t0 < 10
    finally:
        child.kill()

    class Quick:
        stopped = False

        def stop(self) -> None:
            self.stopped = True

    quick = Quick()
    assert stop_within(quick, 5.0) is True and quick.stopped  # type: ignore[arg-type]
