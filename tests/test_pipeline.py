"""The streaming pipeline on a real local Ray: segmentation, ordering, windows, fault recovery, file replay."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import wave
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("faster_whisper")
# A real local Ray with real actors: the integration of what test_recognizer.py checks in milliseconds.
pytestmark = pytest.mark.slow
av = pytest.importorskip("av")

from actors.pipeline import Pipeline  # noqa: E402
from actors.run_file import run_file  # noqa: E402
from actors.sink import PipelineSink  # noqa: E402
from magtkd_stream.wire.bus import EventBus  # noqa: E402
from magtkd_stream.labels import label_set  # noqa: E402
from magtkd_stream.wire.events import make_session_start  # noqa: E402
from magtkd_stream.resources import ASSET_DIR  # noqa: E402
from magtkd_stream.config import StreamConfig, load_config  # noqa: E402
from magtkd_stream.streaming.vector_tap import load_vectors  # noqa: E402
from speech import speech_bounds, synth_speech  # noqa: E402

SR = 16000
FIRST = "Hello, my name is John and I like to eat pizza."
SECOND = "The weather is very nice today in London."
THIRD = "I cannot believe you did that to me."
SAMPLE_MIN_HITS = 4  # of 8 (half); the checkpoint is selected on the 184-utterance dev benchmark, not on
# these 8 lines (docs/RESULTS.md, "The sample conversation", lists each line for the shipped checkpoint)
# Deterministic per waveform (not per call), so concurrent sessions get the same text as a solo run.
SCRIPT = lambda i, w: f"This utterance lasts {len(w) // 1600} tenths of ten seconds."  # noqa: E731


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def conversation(*sentences: str) -> np.ndarray:
    parts = [silence(0.5)]
    for s in sentences:
        parts += [synth_speech(s), silence(1.0)]
    return np.concatenate(parts)


class Collector:
    """A real EventBus (schema validation on) that also keeps every published event in order."""

    def __init__(self) -> None:
        self.bus = EventBus(validate=True)
        self.events: list[dict[str, Any]] = []
        self.hooks: list[Callable[[dict[str, Any]], None]] = []

    def start(self, session: str) -> None:
        self.bus.start_session(session, make_session_start(session, None, False, SR, time.time()))

    def publish(self, session: str, event: Any) -> int:
        seq = self.bus.publish(session, event)
        data = {**event, "seq": seq}
        self.events.append(data)
        for hook in self.hooks:
            hook(data)
        return seq

    def of(self, session: str, kind: Optional[str] = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["session"] == session and (kind is None or e["type"] == kind)]

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if pred(e):
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no matching event within {timeout} s; got {[(e['type'], e.get('utterance')) for e in self.events]}")


async def push(sink: PipelineSink, session: str, audio: np.ndarray, chunk: int = 320) -> None:
    for i in range(0, audio.size, chunk):
        await sink.audio(session, audio[i : i + chunk])


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(ray_local) -> Pipeline:
    pipe = Pipeline.start(load_config("tiny"), asr_script=SCRIPT)
    yield pipe
    pipe.stop()


def test_two_utterances_publish_transcript_then_emotion_in_order(tiny: Pipeline) -> None:
    col = Collector()
    col.start("conv")
    audio = conversation(FIRST, SECOND)

    async def main() -> None:
        sink = PipelineSink(tiny, col.publish)
        await sink.open("conv", "Ann", False)
        await push(sink, "conv", audio)
        await sink.end("conv")

    asyncio.run(main())
    events = col.of("conv")
    assert [(e["type"], e["utterance"]) for e in events] == [
        ("transcript", 0), ("emotion", 0), ("transcript", 1), ("emotion", 1)
    ]
    first_end = 0.5 + speech_bounds(synth_speech(FIRST))[1]
    emotions = col.of("conv", "emotion")
    assert emotions[0]["start"] < first_end < emotions[1]["start"]
    for e in emotions:
        assert e["status"] == "ok" and e["speaker"] == "Ann" and e["model"] == "untrained"
        assert e["present"] == ["text", "audio"]  # no frames were sent: video is absent, not zero-faked
        assert e["modalities"]["video"] == {"present": False, "label": None, "probs": None}
        assert set(e["probs"]) == set(label_set("meld")) and e["label"] == max(e["probs"], key=e["probs"].get)
        assert e["text"].startswith("This utterance lasts")
        stages = e["timing"]["stages_ms"]
        assert {"vad_wait", "asr", "text", "audio", "fusion"} <= set(stages)
        assert e["timing"]["e2e_ms"] >= stages["fusion"]


def test_concurrent_sessions_keep_separate_windows(tiny: Pipeline) -> None:
    """Session A fused alongside session B gives exactly what A gives alone: windows never mix."""
    a_audio, b_audio = conversation(FIRST, SECOND), conversation(THIRD, FIRST)
    solo, both = Collector(), Collector()

    async def run(col: Collector, streams: dict[str, np.ndarray]) -> dict[str, int]:
        sink = PipelineSink(tiny, col.publish)
        for name, audio in streams.items():
            col.start(name)
            await sink.open(name, "X", False)
        await asyncio.gather(*(push(sink, name, audio, chunk=480) for name, audio in streams.items()))
        for name in streams:
            await col.wait_for(lambda e, n=name: e["session"] == n and e["type"] == "emotion" and e["utterance"] == 1)
        sizes = await tiny.call("fusion", "window_sizes")
        await asyncio.gather(*(sink.end(name) for name in streams))
        return sizes

    asyncio.run(run(solo, {"alone": a_audio}))
    sizes = asyncio.run(run(both, {"sa": a_audio, "sb": b_audio}))
    assert sizes == {"sa": 2, "sb": 2}  # one window per session, each holding only its own utterances
    assert asyncio.run(tiny.call("fusion", "window_sizes")) == {}  # end() released them
    alone, sa, sb = solo.of("alone", "emotion"), both.of("sa", "emotion"), both.of("sb", "emotion")
    assert [e["utterance"] for e in sa] == [0, 1] and [e["utterance"] for e in sb] == [0, 1]
    for x, y in zip(alone, sa):
        assert x["text"] == y["text"]
        for label, p in x["probs"].items():
            assert y["probs"][label] == pytest.approx(p, abs=1e-4)


def _write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def _write_mp4(path: Path, audio: np.ndarray, fps: int = 10, size: int = 64) -> None:
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width = v.height = size
        v.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=SR)
        a.layout = "mono"
        for i in range(int(audio.size / SR * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), (i * 7) % 255, np.uint8), format="bgr24")
            frame.pts = i
            for packet in v.encode(frame):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
        for s in range(0, audio.size, 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, s : s + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SR, s
            for packet in a.encode(frame):
                c.mux(packet)
        for packet in a.encode():
            c.mux(packet)


def test_run_file_replays_wav_and_mp4(tiny: Pipeline, tmp_path: Path) -> None:
    audio = conversation(FIRST, SECOND)
    wav, mp4 = tmp_path / "talk.wav", tmp_path / "talk.mp4"
    _write_wav(wav, audio)
    _write_mp4(mp4, audio)
    for media, video in ((wav, False), (mp4, True)):
        lines: list[str] = []
        out, npz = tmp_path / f"{media.suffix[1:]}.jsonl", tmp_path / f"{media.suffix[1:]}.npz"
        summary = run_file(tiny.cfg, media, fast=True, out_jsonl=out, print_fn=lines.append, pipeline=tiny,
                           vectors_out=npz)
        events = [json.loads(line) for line in out.read_text().splitlines()]
        recorded, meta = load_vectors(summary["vectors"])  # what the service computed, utterance by utterance
        finals = [e for e in events if e["type"] == "emotion"]
        assert meta["model"] == finals[0]["model"] and recorded.index.tolist() == [e["utterance"] for e in finals]
        assert meta["encoders"]["video"]["model"] == tiny.cfg.encoders.video.model  # which encoders computed them
        assert recorded.start.tolist() == pytest.approx([e["start"] for e in finals])
        assert recorded.texts == [e["text"] for e in finals] and recorded.present["text"].all()
        assert recorded.present["video"].tolist() == [video, video]
        assert recorded.vectors["text"].shape[0] == 2 and np.abs(recorded.vectors["text"]).sum() > 0
        assert [e["type"] for e in events] == ["session_start", "transcript", "emotion", "transcript", "emotion",
                                               "session_end"]
        assert [e["seq"] for e in events] == list(range(1, 7))
        emotions = [e for e in events if e["type"] == "emotion"]
        assert all(("video" in e["present"]) == video for e in emotions)
        assert summary["utterances"] == 2 and summary["failed"] == 0
        assert sum(summary["emotions"].values()) == 2
        lat = summary["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
        assert lines[0].startswith("[00:0") and "Speaker A:" in lines[0] and lines[0].endswith(" ms")
        assert ("video \u2014" in lines[0]) != video
        assert lines[-1].startswith("utterances: 2") or "utterances: 2" in lines[-1]


def test_run_file_refuses_bad_input_clearly(tiny: Pipeline, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        run_file(tiny.cfg, tmp_path / "missing.wav", pipeline=tiny)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a media file" * 10)
    with pytest.raises(ValueError, match="cannot decode"):
        run_file(tiny.cfg, junk, pipeline=tiny)
    silent_video = tmp_path / "video_only.mp4"
    with av.open(str(silent_video), "w") as c:
        v = c.add_stream("mpeg4", rate=10)
        v.width = v.height = 32
        v.pix_fmt = "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="bgr24")
            frame.pts = i
            for packet in v.encode(frame):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
    with pytest.raises(ValueError, match="no audio stream"):
        run_file(tiny.cfg, silent_video, pipeline=tiny)


def test_killed_encoder_fails_its_utterance_and_the_session_goes_on(tiny: Pipeline) -> None:
    from magtkd_stream.encoders import TextInput

    col = Collector()
    col.start("crash")
    text_actor = tiny.handles("text")[0]
    filler = [TextInput("A", "A rather long sentence that keeps the encoder busy for a while. " * 3, [("B", "ok")] * 4)] * 64

    async def main() -> None:
        sink = PipelineSink(tiny, col.publish)
        await sink.open("crash", None, False)
        await push(sink, "crash", conversation(FIRST))
        await col.wait_for(lambda e: e["type"] == "emotion" and e["utterance"] == 0)
        # Keep the text actor busy so utterance 1's text call is queued inside it when the actor dies.
        busy = [text_actor.encode.remote(filler) for _ in range(300)]  # far longer than the steps below
        await push(sink, "crash", np.concatenate([synth_speech(SECOND), silence(1.0)]))
        await col.wait_for(lambda e: e["type"] == "transcript" and e["utterance"] == 1)
        await asyncio.sleep(0.2)
        ray.kill(text_actor, no_restart=False)
        failed = await col.wait_for(lambda e: e["type"] == "emotion" and e["utterance"] == 1)
        assert failed["status"] == "failed" and failed["label"] is None and failed["probs"] is None
        assert "text#0" in failed["error"]
        await push(sink, "crash", np.concatenate([synth_speech(THIRD), silence(1.0)]))
        await sink.end("crash")
        ray.wait(busy, num_returns=len(busy), timeout=30)

    asyncio.run(main())
    emotions = col.of("crash", "emotion")
    assert [(e["utterance"], e["status"]) for e in emotions] == [(0, "ok"), (1, "failed"), (2, "ok")]
    assert emotions[2]["present"] == ["text", "audio"]
    text = tiny.health()["actors"]["text#0"]
    assert text["state"] == "alive" and text["pid"] > 0 and text["host"]  # the restarted actor's process


def sample_face() -> np.ndarray:
    """A frame of the sample with a speaker's photograph: a face the video actor crops."""
    sample = Path(__file__).resolve().parent.parent / "demo" / "samples" / "conversation.mp4"
    with av.open(str(sample)) as container:
        return next(container.decode(video=0)).to_ndarray(format="bgr24")


async def push_with_video(sink: PipelineSink, session: str, audio: np.ndarray, face: np.ndarray) -> None:
    """Audio with 10 frames a second of media, as a publisher with a camera sends them; frame times go on from
    the audio the session has had so far, as a real stream's do."""
    t0 = sink.sessions[session].core.samples / SR
    for i in range(0, audio.size, 1600):
        await sink.video(session, t0 + i / SR, face)
        await sink.audio(session, audio[i : i + 1600])


async def open_with_a_first_utterance(pipe: Pipeline, col: Collector, session: str, face: np.ndarray) -> PipelineSink:
    """A video session whose first utterance (with faces) has had its emotion event."""
    sink = PipelineSink(pipe, col.publish)
    await sink.open(session, None, True)
    await push_with_video(sink, session, conversation(FIRST), face)
    await col.wait_for(lambda e: e["type"] == "emotion" and e["utterance"] == 0)
    return sink


@pytest.mark.parametrize("kind", ["asr", "text", "audio", "video", "fusion"])
def test_an_actor_killed_while_idle_costs_no_utterance(tiny: Pipeline, kind: str) -> None:
    col = Collector()
    session = f"idle-{kind}"
    col.start(session)
    face = sample_face()

    async def main() -> None:
        sink = await open_with_a_first_utterance(tiny, col, session, face)
        ray.kill(tiny.handles(kind)[0], no_restart=False)
        await asyncio.sleep(2.0)  # no call in flight: the actor dies between two utterances
        await push_with_video(sink, session, np.concatenate([synth_speech(SECOND), silence(1.0)]), face)
        await sink.end(session)

    asyncio.run(main())
    emotions = col.of(session, "emotion")
    assert [(e["utterance"], e["status"], e.get("error")) for e in emotions] == [(0, "ok", None), (1, "ok", None)]
    assert emotions[1]["present"] == emotions[0]["present"] == ["text", "audio", "video"]
    assert tiny.health()["actors"][f"{kind}#0"]["state"] == "alive"


@pytest.mark.parametrize("kind", ["asr", "audio", "video", "fusion"])
def test_an_actor_killed_mid_call_fails_only_that_utterance(tiny: Pipeline, kind: str) -> None:
    """Utterance 1's speech and frames go in, the actor's process is frozen (SIGSTOP), the trailing silence cuts
    the utterance so its call to that actor is sent and cannot finish, then the process is killed: the call dies
    with it. Ray restarts the actor; utterance 2 is fine. (The text actor: the test above.)"""
    import os
    import signal

    col = Collector()
    session = f"mid-{kind}"
    col.start(session)
    face = sample_face()

    async def main() -> None:
        sink = await open_with_a_first_utterance(tiny, col, session, face)
        await push_with_video(sink, session, synth_speech(SECOND), face)
        await asyncio.sleep(1.0)  # the frames' face crops are back: no crop call meets the frozen video actor
        pid = tiny.health()["actors"][f"{kind}#0"]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            await push(sink, session, silence(1.0))  # audio only: the cut, and utterance 1's calls go out
            if kind == "fusion":  # its call follows the transcript and the encoders' vectors
                await col.wait_for(lambda e: e["type"] == "transcript" and e["utterance"] == 1)
            assert sink.in_flight(session) == 1
            await asyncio.sleep(1.0)
        finally:
            os.kill(pid, signal.SIGKILL)
        failed = await col.wait_for(lambda e: e["type"] == "emotion" and e["utterance"] == 1)
        assert failed["status"] == "failed" and f"{kind}#0" in failed["error"], failed
        await push_with_video(sink, session, np.concatenate([synth_speech(THIRD), silence(1.0)]), face)
        await sink.end(session)

    asyncio.run(main())
    emotions = col.of(session, "emotion")
    assert [(e["utterance"], e["status"]) for e in emotions] == [(0, "ok"), (1, "failed"), (2, "ok")]
    assert emotions[2]["present"] == ["text", "audio", "video"]
    assert tiny.health()["actors"][f"{kind}#0"]["state"] == "alive"


def test_stream_config_names_bad_keys() -> None:
    from magtkd_stream.config import ConfigError

    cfg = StreamConfig.from_dict({"actors": {"asr": {"num_cpus": 1, "replicas": 2}}, "vad": {"min_silence_ms": 200}})
    assert cfg.actors["asr"].replicas == 2 and cfg.actors["text"].num_cpus == 0.25 and cfg.vad.min_silence_ms == 200
    with pytest.raises(ConfigError, match="stream.batch_wiat_ms"):
        StreamConfig.from_dict({"batch_wiat_ms": 5})
    with pytest.raises(ConfigError, match="stream.actors.decoder"):
        StreamConfig.from_dict({"actors": {"decoder": {}}})
    with pytest.raises(ConfigError, match="stream.actors.text.replicas"):
        StreamConfig.from_dict({"actors": {"text": {"replicas": 0}}})
    with pytest.raises(ConfigError, match="stream.vad.threshold"):
        StreamConfig.from_dict({"vad": {"threshold": 2}})


def test_lite_profile_transcribes_and_fuses(ray_local) -> None:
    overrides = [] if (ASSET_DIR / "lite.safetensors").is_file() else ["checkpoint=null"]
    cfg = load_config("lite", overrides)
    light = {name: {"num_cpus": 0.1, "threads": 1} for name in ("asr", "text", "audio", "video", "fusion")}
    pipe = Pipeline.start(cfg, stream=StreamConfig.from_dict({"actors": light}))
    try:
        assert pipe.info.audio_from_asr and "audio" not in pipe.slots  # one Whisper pass serves both
        col = Collector()
        col.start("lite")

        sample = Path(__file__).resolve().parent.parent / "demo" / "samples" / "conversation.mp4"
        with av.open(str(sample)) as container:  # a frame with a sample speaker's photograph: a face to crop
            face = next(container.decode(video=0)).to_ndarray(format="bgr24")
        audio = conversation(FIRST)

        async def main() -> None:
            sink = PipelineSink(pipe, col.publish)
            await sink.open("lite", "Ann", True)
            for i in range(0, audio.size, 1600):  # 10 frames per second of media, cropped as they arrive
                await sink.video("lite", i / SR, face)
                await sink.audio("lite", audio[i : i + 1600])
            await sink.end("lite")

        asyncio.run(main())
        assert pipe.info.crop_on_arrival
        transcript = col.of("lite", "transcript")[0]["text"].lower()
        assert "pizza" in transcript and "john" in transcript
        emotion = col.of("lite", "emotion")[0]
        assert emotion["status"] == "ok" and emotion["present"] == ["text", "audio", "video"]
        print("lite stages (ms):", emotion["timing"])
    finally:
        pipe.stop()


def test_interim_events_come_before_their_final_and_leave_the_window_alone(tiny: Pipeline) -> None:
    import copy
    import dataclasses

    pipe = copy.copy(tiny)  # the same actors, with interim events every second of speech
    pipe.stream = dataclasses.replace(tiny.stream, interim_every_s=1.0)
    col = Collector()
    col.start("live")
    long_line = "Honestly I was not expecting any of this, and now I really do not know what to say about it."
    audio = conversation(long_line, SECOND)
    sizes: dict[str, int] = {}

    async def main() -> None:
        sink = PipelineSink(pipe, col.publish)
        await sink.open("live", "Ann", False)
        for i in range(0, audio.size, 1600):  # real-time pace, so speech is still going on while interims run
            await sink.audio("live", audio[i : i + 1600])
            await asyncio.sleep(0.1)
        await col.wait_for(lambda e: e["type"] == "emotion" and e["utterance"] == 1)
        sizes.update(await pipe.call("fusion", "window_sizes"))
        await sink.end("live")

    asyncio.run(main())
    events = col.of("live")
    interims = [e for e in events if e["type"] == "emotion_interim"]
    assert interims, [(e["type"], e.get("utterance")) for e in events]
    assert any(e["utterance"] == 0 for e in interims), "the long first line gets an interim"
    finals = {e["utterance"]: e for e in events if e["type"] == "emotion"}
    for e in interims:
        final = finals[e["utterance"]]
        assert e["final"] is False and e["status"] == "ok"
        assert e["seq"] < final["seq"], "an interim never follows its final"
        assert e["end"] <= final["end"] + 1e-6 and e["start"] == pytest.approx(final["start"], abs=0.05)
    assert sizes["live"] == 2, "interim predictions do not enter the session window"
    assert [e["final"] for e in events if e["type"] == "emotion"] == [True, True]


def test_no_interim_while_another_session_is_speaking(tiny: Pipeline) -> None:
    import copy
    import dataclasses

    pipe = copy.copy(tiny)  # as in the test above, where the same line alone gets interims
    pipe.stream = dataclasses.replace(tiny.stream, interim_every_s=1.0)
    col = Collector()
    col.start("live")
    col.start("other")
    long_line = "Honestly I was not expecting any of this, and now I really do not know what to say about it."
    audio = conversation(long_line, SECOND)
    other = synth_speech(long_line)
    speaking: list[bool] = []

    async def main() -> None:
        sink = PipelineSink(pipe, col.publish)
        await sink.open("live", "Ann", False)
        await sink.open("other", "Bob", False)
        await sink.audio("other", other[: other.size // 2])  # Bob is mid-sentence all along
        for i in range(0, audio.size, 1600):
            await sink.audio("live", audio[i : i + 1600])
            await asyncio.sleep(0.1)
        await col.wait_for(lambda e: e["type"] == "emotion" and e["utterance"] == 1)
        speaking.append(sink.sessions["other"].core.segmenter.speaking)
        await sink.end("live")
        await sink.end("other")

    asyncio.run(main())
    assert speaking == [True], "the other session must still be speaking for this test to mean anything"
    assert [e["final"] for e in col.of("live") if e["type"] == "emotion"] == [True, True]
    assert not [e for e in col.of("live") if e["type"] == "emotion_interim"], "finals first under concurrent speech"


def test_shipped_lite_checkpoint_labels_the_sample_as_scripted(ray_local, tmp_path: Path) -> None:
    """The README's main command: the sample's lines carry scripted emotions; the lite default must follow them."""
    demo = Path(__file__).resolve().parent.parent / "demo" / "samples"
    script = json.loads((demo / "conversation.json").read_text())
    if not (ASSET_DIR / "lite.safetensors").is_file():
        pytest.skip("the lite checkpoint is not in magtkd_stream/assets")
    cfg = load_config("lite")
    light = {name: {"num_cpus": 0.1} for name in ("asr", "text", "audio", "video", "fusion")}  # beside `tiny`
    pipe = Pipeline.start(cfg, stream=dataclasses.replace(cfg.stream, actors=StreamConfig.from_dict({"actors": light}).actors))
    try:
        run_file(cfg, demo / "conversation.mp4", fast=True, out_jsonl=tmp_path / "events.jsonl", print_fn=None,
                 pipeline=pipe)
    finally:
        pipe.stop()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    got = [e["label"] for e in events if e["type"] == "emotion"]
    want = [u["emotion"] for u in script["utterances"]]
    assert len(got) == len(want), (got, want)
    hits = sum(g == w for g, w in zip(got, want))
    assert hits >= SAMPLE_MIN_HITS, f"{hits} of {len(want)} labels as scripted: got {got}, scripted {want}"
    assert len(set(got)) >= 4, f"the labels should vary with the lines: {got}"


def test_run_on_a_silent_file_says_no_speech_found_and_exits_3(tmp_path: Path) -> None:
    import subprocess
    import sys

    silent = tmp_path / "silence.wav"
    with wave.open(str(silent), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
        w.writeframes(np.zeros(3 * SR, "<i2").tobytes())
    proc = subprocess.run([sys.executable, "-m", "magtkd_stream.cli", "run", str(silent), "--config", "tiny",
                           "--fast"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"{silent}: no speech found in 3.0 s of audio" in proc.stderr


def test_run_with_report_writes_the_page_and_its_plots(tmp_path: Path) -> None:
    import subprocess
    import sys

    from magtkd_stream.report import FILES

    speech = tmp_path / "two lines.wav"
    with wave.open(str(speech), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
        w.writeframes((np.clip(conversation(FIRST, SECOND), -1, 1) * 32767).astype("<i2").tobytes())
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "magtkd_stream.cli", "run", str(speech), "--config", "tiny",
                           "--fast", "--report", str(report)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"report written to {report / 'report.html'}" in proc.stdout
    assert sorted(p.name for p in report.iterdir()) == sorted(FILES)
    facts = json.loads((report / "report.json").read_text())
    assert facts["utterances"] == 2 and facts["failed"] == 0 and facts["sessions"] == ["two-lines"]
    page = (report / "report.html").read_text()
    assert page.count("<tr><td>two-lines</td>") == 2 and "<img src=\"timeline.png\"" in page
