"""Demo folder: the sample media matches its script, the live client speaks protocol v1, the web page is self-contained.

The live client runs in --file mode against a real Gateway on 127.0.0.1 whose
pipeline is a small recording sink (a test double that isolates the client);
the web page's JavaScript runs under Node when Node is installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo import live_client, live_messages, live_sources, make_sample, sample_check  # noqa: E402
from demo.live_sources import iter_media  # noqa: E402
from demo import live_view  # noqa: E402
from demo.live_view import draw_overlay  # noqa: E402
from magtkd_stream.wire import events as E  # noqa: E402
from magtkd_stream.wire import protocol as P  # noqa: E402
from magtkd_stream.devices import DeviceError  # noqa: E402
from magtkd_stream.wire.schema import check  # noqa: E402
from magtkd_stream.media import MediaSpan, load_audio, load_frames, probe  # noqa: E402

cv2 = pytest.importorskip("cv2")

SAMPLES = ROOT / "demo" / "samples"
MEDIA, SCRIPT = SAMPLES / "conversation.mp4", SAMPLES / "conversation.json"
WEB = ROOT / "demo" / "web"
TOKEN = "demo-token"
PROBS = {"anger": 0.1, "joy": 0.7, "neutral": 0.2}


@pytest.fixture(scope="module")
def script() -> dict:
    assert MEDIA.is_file() and SCRIPT.is_file(), "run `python demo/make_sample.py` to make the sample"
    return json.loads(SCRIPT.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ the sample


def test_sample_script_is_a_two_speaker_emotional_conversation(script: dict) -> None:
    utts = script["utterances"]
    assert 6 <= len(utts) <= 8
    speakers = [u["speaker"] for u in utts]
    assert len(set(speakers)) == 2 and all(a != b for a, b in zip(speakers, speakers[1:]))
    assert len({u["emotion"] for u in utts}) >= 5
    assert all(u["emotion"] in ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise") for u in utts)
    assert all(u["text"].strip() for u in utts)
    for prev, cur in zip(utts, utts[1:]):
        assert 0.8 <= cur["start"] - prev["end"] <= 1.2
    assert utts[0]["start"] > 0 and utts[-1]["end"] < script["duration"]
    assert 30 <= script["duration"] <= 45


def test_sample_media_matches_its_script(script: dict) -> None:
    assert MEDIA.stat().st_size < 2_000_000
    info = probe(MEDIA)
    assert info.has_audio and info.has_video
    assert info.duration == pytest.approx(script["duration"], abs=0.25)
    audio = load_audio(MediaSpan(str(MEDIA)), sr=16000)
    assert len(audio) / 16000 == pytest.approx(script["duration"], abs=0.25)
    assert np.abs(audio).max() <= 1.0
    rms = lambda a, b: float(np.sqrt(np.mean(audio[int(a * 16000) : int(b * 16000)] ** 2)))  # noqa: E731
    utts = script["utterances"]
    for u, nxt in zip(utts, utts[1:]):
        speech, gap = rms(u["start"], u["end"]), rms(u["end"] + 0.15, nxt["start"] - 0.15)
        assert speech > 0.02 and speech > 10 * gap, (u["index"], speech, gap)
    assert rms(0, utts[0]["start"] - 0.1) < 0.005


def test_the_lite_asr_hears_the_sample_lines(script: dict) -> None:
    """The recognizer reads transcripts: a sample the ASR mishears would show the ASR's errors, not emotions."""
    audio = load_audio(MediaSpan(str(MEDIA)), sr=16000)
    wer = sample_check.word_error_rates(audio, script["utterances"])
    assert len(wer) == len(script["utterances"])
    assert float(np.mean(wer)) <= sample_check.MAX_WER, wer
    # no line is lost (a lost line scores about 1.0); tiny.en's words vary a little with the CPU's math kernels
    # (on one AMD EPYC the 5th line came out at 0.47, elsewhere below 0.35)
    assert max(wer) <= 0.5, wer
    # the measure itself: a line compared with the wrong audio scores badly
    swapped = [{**u, "text": script["utterances"][(k + 1) % len(wer)]["text"]}
               for k, u in enumerate(script["utterances"])]
    assert min(sample_check.word_error_rates(audio, swapped)) > 0.5


def test_a_face_is_found_in_the_middle_of_every_utterance(script: dict) -> None:
    """The service's own detector finds each line's face, large enough to crop, and the speakers are framed apart."""
    detector = sample_check.face_detector()
    sizes = []
    for u in script["utterances"]:
        mid = (u["start"] + u["end"]) / 2
        frame = load_frames(MediaSpan(str(MEDIA), mid, mid + 0.1), num_frames=1)[0]
        assert frame.shape == (script["video"]["height"], script["video"]["width"], 3)
        faces = sample_check.detect_faces(frame, detector)
        assert len(faces) >= 1, f"no face at {mid:.2f} s ({u['speaker']})"
        assert max(y + h for _, y, _, h in faces) <= make_sample.CAPTION_TOP + 20
        sizes.append((u["speaker"], int(max(f[2] for f in faces))))
    by_speaker = {name: {w for s, w in sizes if s == name} for name, _ in sizes}
    assert all(min(ws) >= 100 for ws in by_speaker.values())  # large enough to crop and classify
    a, b = by_speaker.values()
    assert max(a) < min(b) or max(b) < min(a)  # the two speakers are framed differently


def test_sample_pauses_inside_a_line_are_capped() -> None:
    rate = make_sample.AUDIO_RATE
    tone = (0.5 * 32767 * np.sin(np.arange(rate // 2) * 2 * np.pi * 300 / rate)).astype(np.int16)
    line = np.concatenate([tone, np.zeros(rate // 2, np.int16), tone])  # 0.5 s pause
    out = make_sample._tighten(line)
    assert len(out) == pytest.approx(2 * len(tone) + make_sample.MAX_PAUSE_S * rate, abs=0.011 * rate)
    assert np.array_equal(out[: len(tone) - 1000], tone[:-1000]) and np.array_equal(out[-len(tone) + 1000 :], tone[1000:])


def _faces_folder(tmp_path: Path, image: str, label: str, data: bytes) -> Path:
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    (tmp_path / "images" / image).write_bytes(data)
    (tmp_path / "labels.csv").write_text(f"image,emotion,identity\n{image},{label},someone\n", encoding="utf-8")
    return tmp_path


def test_sample_photographs_must_be_the_pinned_files_with_their_labels(tmp_path: Path) -> None:
    ok, data = cv2.imencode(".jpg", np.full((160, 120, 3), 90, np.uint8))
    data = data.tobytes()
    digest = __import__("hashlib").sha256(data).hexdigest()
    pinned = make_sample.Photo("x.jpg", digest, "anger")
    assert make_sample.load_photo(_faces_folder(tmp_path / "a", "x.jpg", "anger", data), pinned).shape == (160, 120, 3)
    with pytest.raises(ValueError, match="SHA-256 is .* expected"):
        make_sample.load_photo(_faces_folder(tmp_path / "b", "x.jpg", "anger", data + b"\0"), pinned)
    with pytest.raises(ValueError, match="labels.csv says 'happiness', the sample expects 'anger'"):
        make_sample.load_photo(_faces_folder(tmp_path / "c", "x.jpg", "happiness", data), pinned)
    with pytest.raises(FileNotFoundError, match="--faces"):
        make_sample.load_photo(tmp_path / "missing", pinned)


def test_each_speaker_is_a_different_dev_identity_photographed_with_the_lines_emotion(script: dict) -> None:
    """Every line shows its speaker's own photograph whose dataset label is the line's emotion; no identity was
    trained on (the composer's dev split), and the two speakers are two people."""
    from training.devset.compose import identity_split

    sides = {side.voice.name: side for side in make_sample.SPEAKERS}
    assert len({side.identity for side in sides.values()}) == 2
    assert all(identity_split(side.identity) == "dev" for side in sides.values())
    images: list[str] = []
    for u in script["utterances"]:
        side = sides[u["speaker"]]
        photo = side.photos[u["emotion"]]
        assert u["face"] == {"dataset": "faces_muxspace", "image": photo.image, "label": photo.label}
        assert make_sample.MUXSPACE_TO_MELD.get(photo.label, photo.label) == u["emotion"]
        assert photo.image.startswith(side.identity + "_")
        images.append(photo.image)
    used: dict[str, set] = {}
    for u, image in zip(script["utterances"], images):
        used.setdefault(image, set()).add((u["speaker"], u["emotion"]))
    assert all(len(v) == 1 for v in used.values())  # a photograph stands for one speaker's one emotion
    faces = make_sample.default_faces_dir()
    if not (faces / "labels.csv").is_file():
        pytest.skip(f"{faces} is absent: the photographs themselves are not checked")
    for side in make_sample.SPEAKERS:
        for photo in side.photos.values():
            assert make_sample.load_photo(faces, photo).ndim == 3


# ------------------------------------------------------------------ live client: messages


def test_publisher_and_subscriber_hellos_follow_the_protocol() -> None:
    text = live_messages.publisher_hello(TOKEN, "cam-1", 48000, speaker="Ana", video=True)
    check(json.loads(text), "hello_publisher.json")
    assert P.parse_client_text(text) == P.PublisherHello(TOKEN, "cam-1", 48000, "Ana", True)
    plain = P.parse_client_text(live_messages.publisher_hello(TOKEN, "cam-1"))
    assert (plain.sample_rate, plain.speaker, plain.video) == (16000, None, False)
    sub = P.parse_client_text(live_messages.subscriber_hello(TOKEN, "cam-1", last_seq=7))
    assert sub == P.SubscriberHello(TOKEN, "cam-1", {"cam-1": 7})
    assert isinstance(P.parse_client_text(live_messages.end_message()), P.EndMessage)
    with pytest.raises(P.ProtocolError, match="session"):
        live_messages.check_hello(live_messages.publisher_hello(TOKEN, "two words"))


def test_audio_framer_cuts_exact_tagged_frames_in_order() -> None:
    framer = live_messages.AudioFramer(320)
    rng = np.random.default_rng(0)
    pieces = [rng.integers(-30000, 30000, n).astype(np.int16) for n in (100, 700, 13, 500)]
    pieces.append(np.array([0.5, -1.0, 2.0], np.float32))  # floats are converted (and clipped)
    msgs = [m for piece in pieces for m in framer.push(piece)] + list(framer.flush())
    chunks = [P.parse_binary(m) for m in msgs]
    assert all(isinstance(c, P.AudioChunk) for c in chunks)
    assert [len(c.pcm) // 2 for c in chunks] == [320] * 4 + [1316 - 4 * 320]
    joined = np.frombuffer(b"".join(c.pcm for c in chunks), "<i2")
    expected = np.concatenate(pieces[:4] + [np.array([16384, -32768, 32767], np.int16)])
    assert np.array_equal(joined, expected)


def test_video_message_carries_timestamp_and_a_scaled_jpeg() -> None:
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, :640] = (0, 0, 255)
    msg = P.parse_binary(live_messages.video_message(3.25, frame, quality=70))
    assert isinstance(msg, P.VideoFrame) and msg.ts == 3.25
    assert P.jpeg_dimensions(msg.jpeg) == (640, 360)
    img = cv2.imdecode(np.frombuffer(msg.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img[180, 100, 2] > 200 and img[180, 500, 2] < 50
    with pytest.raises(ValueError, match="BGR"):
        live_messages.encode_jpeg(np.zeros((10, 10), np.uint8))


def _emotion(utterance: int, probs: dict, final: bool = True) -> dict:
    mods = {"text": E.modality_result(True, probs), "audio": E.modality_result(True, probs),
            "video": E.modality_result(False)}
    return E.make_emotion("s", utterance, probs=probs, modalities=mods, start=1.0, end=2.0, speaker="Ana",
                          text="so happy", model="m", stages_ms={"asr": 5.0}, e2e_ms=120.0, final=final)


def test_event_view_keeps_the_latest_final_result_and_recent_transcript() -> None:
    view = live_messages.EventView(max_lines=2)
    assert view.update({**_emotion(0, PROBS), "seq": 4})
    assert (view.label, view.probs["joy"], view.modalities, view.e2e_ms) == ("joy", 0.7, {
        "text": "joy", "audio": "joy", "video": None}, 120.0)
    assert not view.update(_emotion(0, {"anger": 0.9, "joy": 0.05, "neutral": 0.05}, final=False))
    assert view.label == "joy" and view.last_seq == 4
    for i in range(3):
        view.update(E.make_transcript("s", i, f"line {i}", "Ben", i, i + 1))
    assert view.transcript == ["Ben: line 1", "Ben: line 2"]
    view.update(E.make_session_end("s", "end", 3.0, 0, 0, 0.0))
    assert "ended" in view.status
    line = live_messages.describe(_emotion(1, PROBS))
    assert "joy 0.70" in line and "text=joy" in line and "video" not in line


def test_a_conversation_participant_follows_the_conversation_and_sees_each_speakers_emotion() -> None:
    text = live_messages.publisher_hello(TOKEN, "call.ana", speaker="Ana", conversation="call")
    check(json.loads(text), "hello_publisher.json")
    assert P.parse_client_text(text).conversation == "call"
    sub = P.parse_client_text(live_messages.subscriber_hello(TOKEN, "call.ana", conversation="call"))
    assert sub == P.SubscriberHello(TOKEN, None, None, "call") and sub.target == "conversation call"
    for bad, words in (({"session": "s", "conversation": "call"}, "exactly one of"),
                       ({"conversation": "call", "last_seq": 3}, "with a conversation use 'resume'"),
                       ({"conversation": "two words"}, "conversation")):
        hello = {"type": "hello", "version": 1, "token": TOKEN, "role": "subscriber", **bad}
        with pytest.raises(P.ProtocolError, match=words):
            P.parse_client_text(json.dumps(hello))
    view = live_messages.EventView()
    view.update(_emotion(0, PROBS))
    view.update({**_emotion(0, {"anger": 0.9, "joy": 0.05, "neutral": 0.05}), "speaker": "Ben", "session": "b"})
    assert view.speakers == {"Ana": "joy", "Ben": "anger"}
    frame = np.full((240, 320, 3), 90, np.uint8)
    one = live_view.draw_overlay(frame, live_messages.EventView(speakers={"Ana": "joy"}))
    two = live_view.draw_overlay(frame, view)
    assert two.shape[1] == one.shape[1] and not np.array_equal(one[:, 320:], two[:, 320:])


def test_overlay_leaves_the_picture_alone_and_wraps_long_lines_beside_and_below_it() -> None:
    frame = np.full((480, 640, 3), 200, np.uint8)
    view = live_messages.EventView()
    view.update(_emotion(0, PROBS))
    long_line = "so happy to see you all here tonight, after such a long and difficult year for every one of us " * 2
    view.update(E.make_transcript("s", 0, long_line, "Ana", 1.0, 2.0))
    out = draw_overlay(frame, view)
    assert (frame == 200).all()  # drawn on a new canvas
    assert out.shape[1] == 640 + live_view.PANEL_W and out.shape[0] > 480
    assert (out[:480, :640] == 200).all()  # the picture itself, its captions and name tags, is never covered
    assert (out[:200, 640:] != 24).any() and (out[480:, :400] != 24).any()  # panel and caption strip drawn
    lines = live_view.wrap_text("Ana: " + long_line, 640 + live_view.PANEL_W - 20, 0.5)
    assert len(lines) >= 2 and " ".join(lines) == "Ana: " + long_line.strip()  # wrapped, not cut at the edge
    import cv2

    assert all(cv2.getTextSize(x, live_view.FONT, 0.5, 1)[0][0] <= 640 + live_view.PANEL_W - 20 for x in lines)
    view.update({**_emotion(6, PROBS), "status": "failed", "error": "text#0 failed"})
    assert view.status == "utterance 7 failed: text#0 failed"  # numbered from 1, as people count


# ------------------------------------------------------------------ live client: --file against a real gateway


class RecordingSink:
    """Pipeline stand-in: records the media the gateway delivers, publishes one emotion per 2 s of audio."""

    def __init__(self) -> None:
        self.samples = 0
        self.frames: list[tuple[float, tuple[int, ...]]] = []
        self.opened: Optional[tuple[Optional[str], bool]] = None
        self.publish: Any = None

    def attach(self, publish) -> None:
        self.publish = publish

    async def open(self, session, speaker, video, conversation=None, names=()) -> None:
        self.opened = (speaker, video)

    async def audio(self, session, samples, wall) -> None:
        before, self.samples = self.samples, self.samples + len(samples)
        if self.samples // 32000 > before // 32000:
            self.publish(session, _emotion(before // 32000, PROBS) | {"session": session})

    async def video(self, session, ts, frame) -> None:
        self.frames.append((ts, frame.shape))

    async def end(self, session) -> None:
        pass


@pytest.fixture()
def gateway() -> Iterator[tuple[str, RecordingSink]]:
    """A Gateway on an ephemeral port, in its own thread so the client's asyncio.run can run here."""
    from actors.gateway import Gateway, GatewayConfig

    sink = RecordingSink()
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with Gateway(GatewayConfig(port=0, tokens=(TOKEN,), max_video_fps=1000.0), sink) as gw:
            box["port"] = gw.port
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(10), "gateway did not start"
    yield f"ws://127.0.0.1:{box['port']}/", sink
    stop.set()
    thread.join(10)


def test_file_mode_publishes_the_sample_and_receives_its_events(gateway, script: dict, tmp_path: Path, capsys) -> None:
    url, sink = gateway
    out = tmp_path / "events.jsonl"
    rc = live_client.main(["--file", str(MEDIA), "--fast", "--no-window", "--url", url, "--token", TOKEN,
                           "--session", "demo-file", "--speaker", "Ana", "--fps", "5", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert sink.opened == ("Ana", True)
    assert sink.samples / 16000 == pytest.approx(script["duration"], abs=0.1)
    ts = [t for t, _ in sink.frames]
    assert ts == sorted(ts) and len(ts) == pytest.approx(5 * script["duration"], rel=0.1)
    assert {shape for _, shape in sink.frames} == {(480, 640, 3)}
    events = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end"
    assert kinds.count("emotion") == int(script["duration"] // 2)
    assert events[-1]["reason"] == "end" and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "joy 0.70" in capsys.readouterr().out


class ToneMic:
    """Microphone stand-in: a 440 Hz tone in 20 ms chunks from its own thread, as PyAudio's callback would."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def open(self) -> int:
        return 16000

    def start(self, emit) -> None:
        def run() -> None:
            while not self.closed.is_set():
                t = (self.sent + np.arange(320)) / 16000
                emit((0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))
                self.sent += 320
                self.closed.wait(0.02)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closed.set()
        if self.thread is not None:
            self.thread.join()


class PatternCamera:
    """Camera stand-in: 10 frames a second of a 320x240 pattern."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def open(self) -> tuple[int, int]:
        return 320, 240

    def start(self, emit, t0: float) -> None:
        def run() -> None:
            k = 0
            while not self.closed.wait(0.1):
                emit(0.1 * k, np.full((240, 320, 3), (k * 20) % 255, np.uint8))
                k += 1

        threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        self.closed.set()


def test_device_mode_streams_until_stopped_then_ends_the_session(gateway) -> None:
    url, sink = gateway
    mic, camera = ToneMic(), PatternCamera()
    opts = live_client.ClientOptions(token=TOKEN, session="devices", url=url, window=False, print_events=False)
    client = live_client.LiveClient(opts, mic=mic, camera=camera)

    async def session() -> live_client.ClientResult:
        task = asyncio.create_task(client.run())
        await asyncio.sleep(1.5)
        client.request_stop()
        return await task

    result = asyncio.run(session())
    assert mic.closed.is_set() and camera.closed.is_set()
    assert sink.samples == mic.sent and result.audio_seconds == pytest.approx(mic.sent / 16000)
    assert 0.8 <= mic.sent / 16000 <= 3.0
    assert 5 <= len(sink.frames) == result.video_frames and sink.frames[0][1] == (240, 320, 3)
    assert result.ended is not None and result.events[-1]["type"] == "session_end"
    assert result.events[-1]["reason"] == "end"


def test_client_reports_a_refused_token_and_an_unreachable_server(gateway, capsys) -> None:
    url, _ = gateway
    args = ["--file", str(MEDIA), "--no-window", "--session", "x", "--no-video"]
    assert live_client.main(args + ["--url", url, "--token", "wrong"]) == 1
    assert "bad_token" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert live_client.main(args + ["--url", f"ws://127.0.0.1:{free}/", "--token", TOKEN]) == 1
    assert "magtkd-stream serve" in capsys.readouterr().err


def test_client_names_missing_inputs(tmp_path: Path, capsys) -> None:
    assert live_client.main(["--file", str(tmp_path / "none.mp4"), "--token", TOKEN, "--no-window"]) == 2
    assert "none.mp4" in capsys.readouterr().err
    assert live_client.main(["--file", str(MEDIA), "--token", TOKEN, "--session", "a b", "--no-window"]) == 2
    assert "session" in capsys.readouterr().err
    with pytest.raises(DeviceError, match="--no-video"):
        live_sources.camera(97).open()


def test_file_items_are_16k_frames_in_media_time_order() -> None:
    items = list(iter_media(MEDIA, fps=4, video=True, chunk_ms=40))
    audio = [i for i in items if hasattr(i, "pcm")]
    assert {len(a.pcm) for a in audio[:-1]} == {640} and audio[0].pcm.dtype == np.int16
    assert [a.t for a in audio[:3]] == [0.0, 0.04, 0.08]
    video_t = [i.t for i in items if hasattr(i, "frame")]
    assert video_t == sorted(video_t) and all(b - a >= 0.24 for a, b in zip(video_t, video_t[1:]))


# ------------------------------------------------------------------ web page


def test_web_page_loads_nothing_from_outside() -> None:
    html = (WEB / "index.html").read_text(encoding="utf-8")
    js = (WEB / "app.js").read_text(encoding="utf-8")
    for name, text in (("index.html", html), ("app.js", js)):
        for url in re.findall(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s\"'<>()]*", text):  # only this machine, if any host
            host = re.sub(r"(?i)^[a-z][a-z0-9+.-]*://", "", url).split("/")[0].split(":")[0]
            assert host in ("", "127.0.0.1", "localhost"), f"{name}: {url}"
        assert not re.search(r"(?i)(?:src|href)\s*=\s*[\"']?\s*//", text), name
        assert not re.search(r"(?i)@import|\burl\(|import\s*\(|\bimport\s.+\bfrom\b", text), name
    refs = re.findall(r"(?i)(?:src|href)\s*=\s*[\"']([^\"']+)", html)
    assert refs == ["app.js"] and all((WEB / r).is_file() for r in refs)


NODE_SCRIPT = r"""
const app = require(process.argv[1]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = {};
out.pub = app.publisherHello("tok", "web", 16000, "Ana");
out.pubNoSpeaker = app.publisherHello("tok", "web", 16000, "");
out.sub = app.subscriberHello("tok", "web", 12);
out.end = app.endMessage();
const sine = new Float32Array(48000);
for (let i = 0; i < sine.length; i++) sine[i] = 0.5 * Math.sin(2 * Math.PI * 440 * i / 48000);
const whole = new app.Downsampler(48000, 16000).process(sine);
const d = new app.Downsampler(48000, 16000);
const parts = [];
for (let i = 0; i < sine.length; i += 128) parts.push(...d.process(sine.subarray(i, i + 128)));
out.whole = Array.from(whole);
out.chunked = parts;
const framer = new app.Framer(320);
const frames = framer.push(app.floatToPcm16(whole)).concat(framer.flush());
out.frames = frames.map((f) => Buffer.from(f).toString("base64"));
let s = app.initialState();
for (const msg of input.slice(0, 3)) s = app.foldEvent(s, msg);
out.state = s;
out.badSession = app.checkInputs("ws://h:1/", "t", "a b");
out.whoBefore = app.whoLine(app.initialState());
out.who = app.whoLine(s);
out.closes = [1006, 1000, 4403].map((c) => app.describeClose(c, c === 4403 ? "forbidden" : "", "ws://h:1/"));
let t = app.initialState();
for (const msg of input.slice(3)) t = app.foldEvent(t, msg);
out.later = t;
out.pubConv = app.publisherHello("tok", "call.ana", 16000, "Ana", "call");
out.subConv = app.subscriberHello("tok", "call.ana", 5, "call");
out.badConv = app.checkInputs("ws://h:1/", "t", "web", "a b");
console.log(JSON.stringify(out));
"""


def test_web_page_code_speaks_the_protocol() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed; the page's JavaScript cannot be run here")
    events = [{**_emotion(0, PROBS), "session": "web", "seq": 2},
              {**E.make_transcript("web", 0, "so happy", "Ana", 1.0, 2.0), "seq": 3},
              {**_emotion(0, {"anger": 0.8, "joy": 0.1, "neutral": 0.1}, final=False), "session": "web", "seq": 4},
              # a second subscription, folded from here on: transcripts first, as the server sends them
              {**E.make_transcript("web", 6, "so happy", "Ana", 1.0, 2.0), "seq": 5},
              {**_emotion(6, PROBS), "session": "web", "seq": 6},
              {**E.make_transcript("web", 7, "oh no", "Ana", 3.0, 4.0), "seq": 7},
              {**_emotion(7, PROBS), "session": "web", "seq": 8, "status": "failed", "label": None, "probs": None,
               "error": "text#0 failed"}]
    proc = subprocess.run([node, "-e", NODE_SCRIPT, str(WEB / "app.js")], input=json.dumps(events),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert P.parse_client_text(out["pub"]) == P.PublisherHello("tok", "web", 16000, "Ana", False)
    assert P.parse_client_text(out["pubNoSpeaker"]).speaker is None
    assert P.parse_client_text(out["sub"]) == P.SubscriberHello("tok", "web", {"web": 12})
    assert isinstance(P.parse_client_text(out["end"]), P.EndMessage)
    whole = np.array(out["whole"])
    assert len(whole) == 16000 and np.allclose(whole, out["chunked"])
    spectrum = np.abs(np.fft.rfft(whole))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1  # 1 s at 16 kHz: bin k is k Hz
    import base64

    chunks = [P.parse_binary(base64.b64decode(f)) for f in out["frames"]]
    assert [len(c.pcm) // 2 for c in chunks] == [320] * 50
    pcm = np.frombuffer(b"".join(c.pcm for c in chunks), "<i2")
    assert np.allclose(pcm / 32768, whole, atol=1e-4)
    state = out["state"]
    assert (state["label"], state["probs"]["joy"], state["lastSeq"], state["interim"]) == ("joy", 0.7, 4, False)
    assert state["modalities"]["video"]["present"] is False and state["transcript"][0]["text"] == "so happy"
    assert "session" in out["badSession"]
    assert out["whoBefore"] == "no utterance yet"
    assert out["who"] == "Ana · utterance 1 · answered 120 ms after the end of speech"  # counted from 1
    assert "cannot reach the server at ws://h:1/" in out["closes"][0] and "(1006)" not in out["closes"][0]
    assert out["closes"][1] == "the server closed the connection" and out["closes"][2] == "connection closed (4403): forbidden"
    later = out["later"]
    assert [(line["utterance"], line["label"]) for line in later["transcript"]] == [(6, "joy"), (7, "failed")]
    assert later["statusKind"] == "error" and later["status"] == "utterance 8 failed: text#0 failed"
    assert later["speakers"] == {"Ana": "joy"}  # the failed utterance leaves Ana's latest emotion as it was
    assert P.parse_client_text(out["pubConv"]).conversation == "call"
    assert P.parse_client_text(out["subConv"]) == P.SubscriberHello("tok", None, None, "call")
    assert "conversation" in out["badConv"]


@pytest.mark.slow
def test_web_page_publishes_a_microphone_and_shows_the_events_in_a_browser(gateway, tmp_path: Path) -> None:
    """Headless Chromium with its fake microphone, driven over the DevTools protocol."""
    from demo.headless import HeadlessPage, find_browser, serve_folder

    if find_browser() is None:
        if os.environ.get("MAGTKD_REQUIRE_BROWSER"):
            pytest.fail("MAGTKD_REQUIRE_BROWSER is set (CI) but no Chromium/Chrome is on PATH")
        pytest.skip("no Chromium/Chrome on PATH; the page cannot be run in a browser here")
    url, sink = gateway
    STATUS = "document.getElementById('status').textContent"
    with serve_folder(WEB) as http_port, HeadlessPage(user_data_dir=tmp_path) as page:
        page.navigate(f"http://127.0.0.1:{http_port}/index.html?url={url}&token={TOKEN}&session=web")
        page.wait_for("document.getElementById('token').value !== ''")
        assert page.js("document.getElementById('who').textContent") == "no utterance yet"
        page.js("document.getElementById('mic').click()")
        page.wait_for("document.getElementById('label').textContent === 'joy'", describe=STATUS)
        bars = page.js("[...document.querySelectorAll('#bars .bar')].map(b => b.innerText.replace(/\\s+/g, ' '))")
        assert bars == ["anger 0.10", "joy 0.70", "neutral 0.20"]
        assert page.js("document.getElementById('modalities').innerText").split("\n") == [
            "text: joy 0.70", "audio: joy 0.70", "video: absent"]
        who = page.js("document.getElementById('who').textContent")
        assert re.fullmatch(r".+ · utterance [1-9]\d* · answered \d+ ms after the end of speech", who), who
        page.js("document.getElementById('mic').click()")
        page.wait_for(f"{STATUS}.includes('ended (end)')", describe=STATUS)
        assert page.js("document.getElementById('status').className") == ""  # an ordinary status, not an error
    assert sink.opened == (None, False) and sink.samples >= 32000


def test_the_live_client_reads_the_token_from_the_variable_serve_reads() -> None:
    assert live_client.TOKEN_ENV == "MAGTKD_TOKENS"
    assert live_client.default_token({"MAGTKD_TOKENS": " first , second"}) == "first"
    assert live_client.default_token({"MAGTKD_TOKENS": " , "}) is None and live_client.default_token({}) is None
