"""Conversations of several participants: one context window and one prompt context across publishers.

First over the fake backend (what the Recognizer asks of the models), then end to
end over real websocket connections with the tiny profile's real models in this
process, where one participant's earlier line changes the other's fused emotion.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("onnxruntime")

from test_recognizer import (  # noqa: E402  (the fake backend and helpers of the Recognizer's tests)
    FIRST,
    SECOND,
    THIRD,
    Collector,
    FakeBackend,
    conversation,
    push,
    recognizer,
    run,
    shut,
    text_items,
    until,
)

from magtkd_stream.streaming.recognizer import CONVERSATION_KEY  # noqa: E402


def test_participants_share_one_window_and_prompt_context_in_cut_order() -> None:
    fake, col = FakeBackend(), Collector("ann", "ben", "solo")

    async def main() -> None:
        rec = recognizer(fake, col)
        try:
            await rec.open("ann", "Ann", False, conversation="call")
            await rec.open("ben", "Ben", False, conversation="call")
            await rec.open("solo", "Sol", False)  # a session of its own beside them
            await push(rec, "ann", conversation(FIRST, lead=0.3))
            await until(lambda: len(col.of("ann", "emotion")) == 1, "Ann's line")
            await push(rec, "ben", conversation(SECOND, lead=0.3))
            await push(rec, "solo", conversation(THIRD, lead=0.3))
            await until(lambda: len(col.of("ben", "emotion")) == 1, "Ben's line")
            await push(rec, "ann", conversation(THIRD, lead=0.0))
            await rec.end("ann")  # Ann leaves; the conversation's window stays for Ben
            assert [c.session for c in fake.of("end_session")] == []
            await push(rec, "ben", conversation(FIRST, lead=0.0))
            await rec.end("ben")
            await rec.end("solo")
        finally:
            await shut(rec, fake)

    run(main)
    assert col.errors == []
    key = CONVERSATION_KEY + "call"
    fused = [(c.session, c.speaker) for c in fake.of("fuse")]
    assert [f for f in fused if f[0] == key] == [(key, "Ann"), (key, "Ben"), (key, "Ann"), (key, "Ben")]
    assert ("solo", "Sol") in fused  # its own window, never the conversation's
    items = text_items(fake)
    ann0, ben0 = col.of("ann", "transcript")[0]["text"], col.of("ben", "transcript")[0]["text"]
    ben_first = items[ben0]
    assert list(ben_first.context) == [("Ann", ann0)], "Ben's prompt reads Ann's earlier line"
    solo_line = col.of("solo", "transcript")[0]["text"]
    assert list(items[solo_line].context) == [], "a session of its own never sees the conversation"
    ann1 = col.of("ann", "transcript")[1]["text"]
    assert [s for s, _ in items[ann1].context] == ["Ann", "Ben"]
    for e in col.of("ann") + col.of("ben"):
        assert e["conversation"] == "call"
    assert all("conversation" not in e for e in col.of("solo"))
    # the window goes once the last participant leaves
    assert sorted(c.session for c in fake.of("end_session")) == sorted([key, "solo"])


# ---------------------------------------------------------------- over real websockets, real (tiny) models

TOKEN = "tok-conv"
SR = 16000
LINES = ("I finally got the job, this is wonderful.", "Why would you say that to me?")


def _script(index: int, wave: np.ndarray) -> str:
    """The same audio always reads as the same words, whichever call transcribes it."""
    return LINES[len(wave) % 2]


async def _publish(port: int, session: str, speaker: str, audio: np.ndarray, conv: str,
                   hold: asyncio.Event | None = None) -> None:
    """Send the audio as fast as the server reads it; wait for `hold` (if given) before ending the session."""
    from websockets.asyncio.client import connect

    from magtkd_stream.wire.protocol import encode_audio

    hello = {"type": "hello", "version": 1, "token": TOKEN, "role": "publisher", "session": session,
             "sample_rate": SR, "speaker": speaker, "conversation": conv}
    async with connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(json.dumps(hello))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome" and welcome["conversation"] == conv, welcome
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        for i in range(0, pcm.size, 1600):
            await ws.send(encode_audio(pcm[i: i + 1600]))
        if hold is not None:
            await hold.wait()
        await ws.send(json.dumps({"type": "end"}))
        while json.loads(await ws.recv())["type"] != "ended":
            pass


async def _follow(port: int, conv: str, sessions: set[str], out: list[dict[str, Any]]) -> None:
    """Subscribe to a conversation; collect its events until every session in `sessions` has ended."""
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1, "token": TOKEN, "role": "subscriber",
                                  "conversation": conv}))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome" and welcome["conversation"] == conv and "session" not in welcome
        ended: set[str] = set()
        while ended != sessions:
            msg = json.loads(await ws.recv())
            out.append(msg)
            if msg["type"] == "session_end":
                ended.add(msg["session"])


async def _until(pred: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
def test_two_participants_over_websockets_one_window_across_them() -> None:
    from speech import synth_speech

    from actors.gateway import Gateway, GatewayConfig
    from magtkd_stream.config import load_config
    from magtkd_stream.streaming.local_backend import LocalBackend
    from magtkd_stream.streaming.recognizer import Recognizer
    from magtkd_stream.wire.events import validate_event

    def line(text: str) -> np.ndarray:
        quiet = np.zeros(SR // 2, np.float32)
        return np.concatenate([quiet, synth_speech(text), quiet, quiet, quiet])

    ann_audio, ben_audio = line("Guess what, I finally got the job."), line("Why would you say that to me?")

    async def main() -> tuple[list[dict], list[dict]]:
        backend = await LocalBackend.start(load_config("tiny"), asr_script=_script, threads=2)
        rec = Recognizer(backend, vad_threads=1)
        try:
            async with Gateway(GatewayConfig(port=0, tokens=(TOKEN,)), rec) as gw:
                both: list[dict] = []
                follower = asyncio.create_task(_follow(gw.port, "call", {"call.ann", "call.ben"}, both))
                await asyncio.sleep(0.2)
                # Ann speaks and stays connected while Ben joins and answers: one conversation, two publishers
                ben_done = asyncio.Event()
                ann = asyncio.create_task(_publish(gw.port, "call.ann", "Ann", ann_audio, "call", ben_done))
                await _until(lambda: any(e["type"] == "emotion" for e in both), "Ann's emotion")
                await _publish(gw.port, "call.ben", "Ben", ben_audio, "call")
                ben_done.set()
                await ann
                await asyncio.wait_for(follower, 60)
                alone: list[dict] = []  # the same line from Ben, in a conversation of his own
                follower = asyncio.create_task(_follow(gw.port, "solo", {"solo.ben"}, alone))
                await asyncio.sleep(0.2)
                await _publish(gw.port, "solo.ben", "Ben", ben_audio, "solo")
                await asyncio.wait_for(follower, 60)
                return both, alone
        finally:
            await rec.close()
            backend.stop()

    both, alone = asyncio.run(asyncio.wait_for(main(), 240))
    for e in both + alone:
        validate_event(e)
    starts = {e["session"]: e for e in both if e["type"] == "session_start"}
    assert starts["call.ann"]["conversation"] == starts["call.ben"]["conversation"] == "call"
    assert starts["call.ann"]["offset"] == 0 and starts["call.ben"]["offset"] > 0
    emotions = [e for e in both if e["type"] == "emotion"]
    assert [e["speaker"] for e in emotions] == ["Ann", "Ben"], emotions
    assert all(e["status"] == "ok" and e["conversation"] == "call" for e in emotions)
    on_clock = [starts[e["session"]]["offset"] + e["start"] for e in emotions]
    assert on_clock == sorted(on_clock), "events arrive in the conversation's media-time order"
    ben_in_call = emotions[1]
    (ben_alone,) = [e for e in alone if e["type"] == "emotion"]
    assert ben_in_call["text"] == ben_alone["text"]  # the same words, the same voice ...
    assert ben_in_call["modalities"]["audio"]["probs"] == ben_alone["modalities"]["audio"]["probs"]
    difference = max(abs(ben_in_call["probs"][k] - ben_alone["probs"][k]) for k in ben_in_call["probs"])
    assert difference > 1e-3, "... but Ann's earlier line is in Ben's window, so the fused emotion differs"


def test_a_client_names_the_voices_a_diarizing_server_tells_apart() -> None:
    import dataclasses

    from magtkd_stream.config import DiarizeConfig
    from magtkd_stream.streaming.recognizer import Recognizer
    from magtkd_stream.wire.protocol import parse_client_text
    from test_recognizer import CFG

    hello = parse_client_text(json.dumps({"type": "hello", "version": 1, "token": "t", "role": "publisher",
                                          "session": "room", "sample_rate": 16000, "speakers": ["Ana", "Ben"]}))
    assert hello.speakers == ("Ana", "Ben")
    stream = dataclasses.replace(CFG.stream, diarize=DiarizeConfig(enabled=True, threshold=0.9))
    fake, col = FakeBackend(stream), Collector("room")
    voices = iter([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])

    async def main() -> None:
        rec = Recognizer(fake, col.publish, vad_threads=1, embedder=lambda audio: np.asarray(next(voices), np.float32))
        try:
            await rec.open("room", None, False, names=hello.speakers)
            await push(rec, "room", conversation(FIRST, SECOND, THIRD))
            await rec.end("room")
        finally:
            await shut(rec, fake)

    run(main)
    assert [e["speaker"] for e in col.of("room", "emotion")] == ["Ana", "Ben", "Ana"]


def test_two_voices_in_one_segment_become_two_utterances_of_two_speakers() -> None:
    """No pause between two people: the VAD cuts one segment, the diarizer cuts it where the voice changes."""
    import dataclasses

    from magtkd_stream.config import DiarizeConfig
    from magtkd_stream.streaming.diarize import SpeakerEmbedder
    from magtkd_stream.streaming.recognizer import Recognizer
    from speech import speech_bounds, synth_speech
    from test_recognizer import CFG, silence

    pytest.importorskip("resemblyzer")
    first = synth_speech("Honestly I was not expecting any of this, and now I really do not know what to say.",
                         voice="en-us+m3")
    first = first[: int(speech_bounds(first)[1] * 16000) + 160]  # the answer follows without a pause
    second = synth_speech("Well that is fine by me, we can talk about it again tomorrow after breakfast.",
                          voice="en-us+f3")
    embedder = SpeakerEmbedder()

    def recognise(split: bool) -> tuple[FakeBackend, Collector]:
        stream = dataclasses.replace(CFG.stream, diarize=DiarizeConfig(enabled=True, split=split))
        fake, col = FakeBackend(stream), Collector("room")

        async def main() -> None:
            rec = Recognizer(fake, col.publish, vad_threads=1, embedder=embedder)
            try:
                await rec.open("room", None, False)
                await push(rec, "room", np.concatenate([silence(0.5), first, second, silence(1.2)]))
                await rec.end("room")
            finally:
                await shut(rec, fake)

        run(main)
        return fake, col

    fake, col = recognise(split=False)
    assert len(fake.of("transcribe")) == 1, "the VAD alone hears one utterance"
    fake, col = recognise(split=True)
    assert len(fake.of("transcribe")) == 2, "one ASR call per voice"
    emotions = col.of("room", "emotion")
    assert [e["speaker"] for e in emotions] == ["room", "room 2"]
    boundary = 0.5 + len(first) / 16000
    assert abs(emotions[0]["end"] - boundary) < 0.8 and emotions[1]["start"] == emotions[0]["end"]


@pytest.mark.slow
def test_the_python_api_opens_participants_of_one_conversation() -> None:
    import magtkd_stream
    from speech import synth_speech

    line = np.concatenate([np.zeros(SR // 2, np.float32), synth_speech("I finally got the job."),
                           np.zeros(int(1.2 * SR), np.float32)])
    with magtkd_stream.load("tiny") as rec:
        ann = rec.session("call.ann", speaker="Ann", conversation="call")
        ann.feed_audio(line)
        time.sleep(0.3)
        ben = rec.session("call.ben", speaker="Ben", conversation="call")
        ben.feed_audio(line)
        solo = rec.session("solo", speaker="Sol")
        ben.close()
        ann.close()
        solo.close()
        events = {s.session: s.poll() for s in (ann, ben, solo)}
    starts = {k: v[0] for k, v in events.items()}
    assert starts["call.ann"]["conversation"] == starts["call.ben"]["conversation"] == "call"
    assert starts["call.ann"]["offset"] == 0 and starts["call.ben"]["offset"] >= 0.3
    assert "conversation" not in starts["solo"]
    ben_emotions = [e for e in events["call.ben"] if e["type"] == "emotion"]
    assert ben_emotions and all(e["conversation"] == "call" and e["speaker"] == "Ben" for e in ben_emotions)
