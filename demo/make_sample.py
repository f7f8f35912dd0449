"""Make demo/samples/conversation.mp4 and its script, conversation.json.

The sample is a short conversation between two speakers with visible, frontal
faces and clearly emotional lines, so that `magtkd-stream run` and the demo
clients have something meaningful to show on a machine without a camera or
microphone. The lines are written for this project and spoken by espeak-ng
(with the emotion-dependent prosody of the synthetic training set). Each
speaker is a different real person photographed with the line's expression:
photographs of two *dev* identities of faces_muxspace (Apache-2.0; no model
was trained on them), chosen by the dataset's own expression label. The
fictional speakers "Ana" and "Ben" are not those people, who never said these
lines.

The photographs are read from the data folder (--faces, default
$MAGTKD_DATA/faces_muxspace or ../shared/data/faces_muxspace) and checked
against the SHA-256 and label pinned below, so the sample is rebuilt exactly.
After writing, the script checks its own output: duration, audible speech in
every utterance, and a face found by the service's own detector (BlazeFace)
in the middle of every utterance, and it prints what the lite profile's face CNN reads in each
(printed, never used to choose a photograph).

Usage: python demo/make_sample.py [--out demo/samples] [--faces DIR] [--check-only]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make `demo` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magtkd_stream.media import mux_mp4
from training.data.synthetic import AUDIO_RATE, Voice, speak, video_codec

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "samples"
MEDIA_NAME = "conversation.mp4"
SCRIPT_NAME = "conversation.json"
FACES_DATASET = "faces_muxspace"

WIDTH, HEIGHT, FPS = 640, 480, 12
CRF = 30
AUDIO_BITRATE = 40_000
LEAD_S, GAP_S, TAIL_S = 0.6, 1.0, 0.8
MAX_PAUSE_S = 0.16  # longest pause kept inside one line
PEAK = 0.7  # of full scale: leaves headroom for AAC overshoot, so decoded audio stays within [-1, 1]
CAPTION_TOP = HEIGHT - 78  # faces must stay above the caption band
# muxspace writes "happiness"; the sample's lines use MELD's labels
MUXSPACE_TO_MELD = {"happiness": "joy"}


@dataclass(frozen=True)
class Photo:
    """One pinned photograph of faces_muxspace/images: its file, SHA-256 and the dataset's label."""

    image: str
    sha256: str
    label: str  # as labels.csv gives it


@dataclass(frozen=True)
class Side:
    """One speaker: voice, whose photographs, and how they are framed."""

    voice: Voice
    identity: str  # faces_muxspace identity (a dev identity: see training/devset/compose.py identity_split)
    photos: dict[str, Photo]  # MELD emotion -> photograph showing it
    height: int  # the photograph is scaled to this many pixels high
    backdrop: tuple[int, int, int]  # BGR
    framing: str


SPEAKERS: tuple[Side, ...] = (
    Side(Voice("Ana", "en-us+f3", 60, 160, (60, 170, 255)), "KatrinaKaif", {
        "joy": Photo("KatrinaKaif_19.jpg", "bca26de73228fd93990cbfc0eae95a7b2e044e1a400fc4f8a12afc4b50554975", "happiness"),
        "sadness": Photo("KatrinaKaif_89.jpg", "c5d0d09b9fbc7c0b18f9e74248a5f083c705174333a38b0206d500fdeb6bb699", "sadness"),
        "fear": Photo("KatrinaKaif_65.jpg", "bf747c680b00f84be4aa7a3058b8d8f617bbc974aebd3f70288e657893f47953", "fear"),
        "disgust": Photo("KatrinaKaif_62.jpg", "9b88d4a48f08cae297f8d8872fc28cf62886259899cf638fd066223425aea875", "disgust"),
    }, 340, (70, 52, 40), "the photograph scaled to 340 px high, centred on a dark blue backdrop"),
    Side(Voice("Ben", "en-gb", 45, 150, (255, 200, 80)), "Gerhard_Schroeder", {
        "surprise": Photo("Gerhard_Schroeder_0103.jpg", "a8c69edf67875464b15eef1b40048dc3dd49bc2e4d1ae4c9a7f6ed6b17c1f866", "surprise"),
        "neutral": Photo("Gerhard_Schroeder_0012.jpg", "48c97d7a274ab9c27bcbd93d3558dacfb84462f4810f9a482767e130b0c03755", "neutral"),
        "anger": Photo("Gerhard_Schroeder_0085.jpg", "88b23f457c7e6cc42db479df305f6192a9306c492b7ac8db93528ccc578a1f13", "anger"),
        "joy": Photo("Gerhard_Schroeder_0005.jpg", "564a10a9029f8c3c6068d8977d2f66e40ade7c492492a6d2168002f4044682d4", "happiness"),
    }, 250, (40, 58, 48), "the photograph scaled to 250 px high, centred on a dark green backdrop"),
)

# (speaker index, MELD emotion label, line): the words alone carry the emotion, and so does the photograph.
LINES: tuple[tuple[int, str, str], ...] = (
    (0, "joy", "Guess what? I got the job! I am so happy, this is the best day of my life!"),
    (1, "surprise", "Wait, what? You got it? No way, I can't believe it!"),
    (0, "sadness", "But it means I am moving away. I will miss you so much, it breaks my heart."),
    (1, "neutral", "The train takes two hours. The station is close to the office."),
    (0, "fear", "Honestly, I am terrified. What if I fail and they fire me after a week?"),
    (1, "anger", "Stop it! I am furious that you always put yourself down like this!"),
    (0, "disgust", "Ugh, you are right. That awful voice in my head is disgusting."),
    (1, "joy", "Good! Now let's go out and celebrate, I am so proud of you!"),
)


# ------------------------------------------------------------------ sources


def default_faces_dir() -> Path:
    """$MAGTKD_DATA/faces_muxspace, else the shared data folder beside the repository."""
    root = os.environ.get("MAGTKD_DATA")
    base = Path(root) if root else HERE.parents[1] / "shared" / "data"
    return base / FACES_DATASET


def load_photo(faces_dir: Path, photo: Photo) -> np.ndarray:
    """The BGR photograph, checked against its pinned SHA-256 and its label in labels.csv."""
    path = faces_dir / "images" / photo.image
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give --faces the faces_muxspace folder (images/, labels.csv)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != photo.sha256:
        raise ValueError(f"{photo.image}: SHA-256 is {digest}, expected {photo.sha256}; "
                         "the sample is only made from the pinned photographs")
    labels = faces_dir / "labels.csv"
    with labels.open(newline="", encoding="utf-8") as fh:
        given = {row["image"]: row["emotion"].strip().lower() for row in csv.DictReader(fh)}
    if given.get(photo.image) != photo.label:
        raise ValueError(f"{photo.image}: labels.csv says {given.get(photo.image)!r}, the sample expects {photo.label!r}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{photo.image} did not decode as an image")
    return image


def speaker_view(photo: np.ndarray, side: Side) -> np.ndarray:
    """HEIGHT x WIDTH BGR picture of one speaker: the photograph, scaled, centred above the caption band."""
    view = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    view[:] = side.backdrop
    h = side.height
    w = int(round(photo.shape[1] * h / photo.shape[0]))
    scaled = cv2.resize(photo, (w, h), interpolation=cv2.INTER_CUBIC)
    top = 56 + (CAPTION_TOP - 56 - h) // 2
    left = (WIDTH - w) // 2
    view[top : top + h, left : left + w] = scaled
    return view


def _trim(samples: np.ndarray, pad_s: float = 0.02) -> np.ndarray:
    """Cut espeak-ng's leading/trailing silence so the script's start/end mark the speech itself."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 0.02 * 32768)
    if len(loud) == 0:
        raise RuntimeError("espeak-ng produced silence")
    pad = int(pad_s * AUDIO_RATE)
    return samples[max(0, loud[0] - pad) : loud[-1] + pad]


def _tighten(samples: np.ndarray, max_pause_s: float = MAX_PAUSE_S) -> np.ndarray:
    """Shorten pauses inside a line to max_pause_s, so a voice-activity detector keeps the line whole."""
    hop = AUDIO_RATE // 100  # 10 ms
    n = len(samples) // hop
    rms = np.sqrt(np.mean((samples[: n * hop].astype(np.float32).reshape(n, hop) / 32768.0) ** 2, axis=1))
    quiet = rms < 0.01
    keep = np.ones(len(samples), bool)
    limit = int(max_pause_s * 100)
    i = 0
    while i < n:
        if not quiet[i]:
            i += 1
            continue
        j = i
        while j < n and quiet[j]:
            j += 1
        if j - i > limit:  # drop the middle of the pause, keep its edges
            lo = (i + limit // 2) * hop
            keep[lo : lo + (j - i - limit) * hop] = False
        i = j
    return samples[keep]


def synthesize(workdir: Path) -> tuple[np.ndarray, list[dict]]:
    """The whole conversation's int16 track at AUDIO_RATE and one script entry per line."""
    pieces: list[np.ndarray] = [np.zeros(int(LEAD_S * AUDIO_RATE), np.int16)]
    cursor = len(pieces[0])
    utterances: list[dict] = []
    for i, (who, emotion, text) in enumerate(LINES):
        speech = _tighten(_trim(speak(text, SPEAKERS[who].voice, emotion, workdir)))
        if i:
            pieces.append(np.zeros(int(GAP_S * AUDIO_RATE), np.int16))
            cursor += len(pieces[-1])
        utterances.append({
            "index": i, "speaker": SPEAKERS[who].voice.name, "text": text, "emotion": emotion,
            "face": {"dataset": FACES_DATASET, "image": SPEAKERS[who].photos[emotion].image,
                     "label": SPEAKERS[who].photos[emotion].label},
            "start": round(cursor / AUDIO_RATE, 3), "end": round((cursor + len(speech)) / AUDIO_RATE, 3),
        })
        pieces.append(speech)
        cursor += len(speech)
    pieces.append(np.zeros(int(TAIL_S * AUDIO_RATE), np.int16))
    track = np.concatenate(pieces).astype(np.float32)
    track *= PEAK * 32767 / max(float(np.abs(track).max()), 1.0)  # one gain for all: lines keep their loudness
    return np.round(track).astype(np.int16), utterances


# ------------------------------------------------------------------ pictures


def _wrap(text: str, scale: float, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and cv2.getTextSize(trial, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def render_frame(view: np.ndarray, side: Side, caption: str, speaking: bool, level: float) -> np.ndarray:
    """One frame: the speaker's picture (nodding with the voice), name tag, caption and level bar."""
    shift = int(round(4 * level)) if speaking else 0
    frame = np.concatenate([np.repeat(view[:1], shift, axis=0), view[: HEIGHT - shift]]) if shift else view.copy()
    name = side.voice.name
    cv2.rectangle(frame, (12, 12), (36 + 22 * len(name), 48), (20, 20, 20), -1)
    cv2.circle(frame, (26, 30), 7, side.voice.colour if speaking else (90, 90, 90), -1)
    cv2.putText(frame, name, (40, 39), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    band = frame[CAPTION_TOP:]
    band[:] = (band.astype(np.uint16) * 3 // 10).astype(np.uint8)
    for k, line in enumerate(_wrap(caption, 0.62, WIDTH - 40)[:2]):
        y = CAPTION_TOP + 30 + 28 * k
        cv2.putText(frame, line, (20, y), cv2.FONT_HERSHEY_SIMPLEX, 0.62, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.rectangle(frame, (20, HEIGHT - 12), (20 + int((WIDTH - 40) * min(level, 1.0)), HEIGHT - 6), side.voice.colour, -1)
    return frame


def _levels(track: np.ndarray, n_frames: int) -> np.ndarray:
    """Loudness in [0, 1] of the audio shown with each frame."""
    hop = AUDIO_RATE / FPS
    out = np.zeros(n_frames)
    for i in range(n_frames):
        seg = track[int(i * hop) : int((i + 1) * hop)].astype(np.float32) / 32768.0
        out[i] = float(np.sqrt(np.mean(seg**2))) if len(seg) else 0.0
    return np.clip(out / max(out.max(), 1e-6) * 1.2, 0.0, 1.0)


# ------------------------------------------------------------------ writing


def write_media(path: Path, faces_dir: Path, track: np.ndarray, utterances: list[dict]) -> float:
    """Mux frames (H.264) and the track (mono AAC) into an mp4, interleaved; returns its duration."""
    import av

    duration = len(track) / AUDIO_RATE
    n_frames = int(np.ceil(duration * FPS))
    views = {(k, emotion): speaker_view(load_photo(faces_dir, photo), side)
             for k, side in enumerate(SPEAKERS) for emotion, photo in side.photos.items()}
    levels = _levels(track, n_frames)
    by_name = {side.voice.name: k for k, side in enumerate(SPEAKERS)}
    pcm = track.astype(np.float32) / 32768.0

    def frames() -> Iterator[np.ndarray]:
        for i in range(n_frames):
            t = i / FPS
            current = max([u for u in utterances if u["start"] <= t] or [utterances[0]], key=lambda u: u["start"])
            who = by_name[current["speaker"]]
            speaking = current["start"] <= t <= current["end"]
            yield render_frame(views[who, current["emotion"]], SPEAKERS[who], current["text"], speaking, levels[i])

    vcodec = video_codec(av)
    options = {"crf": str(CRF), "preset": "medium", "g": str(2 * FPS)} if vcodec == "libx264" else {}
    mux_mp4(path, frames(), pcm, AUDIO_RATE, FPS, (WIDTH, HEIGHT), vcodec, options, AUDIO_BITRATE)
    return duration


def make_sample(out_dir: Path, faces_dir: Optional[Path] = None) -> tuple[Path, Path]:
    """Write conversation.mp4 and conversation.json into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    faces_dir = faces_dir or default_faces_dir()
    for side in SPEAKERS:  # every photograph checked before anything is written
        for emotion, photo in side.photos.items():
            if MUXSPACE_TO_MELD.get(photo.label, photo.label) != emotion:
                raise ValueError(f"{photo.image} is labelled {photo.label!r}; it cannot show {emotion!r}")
            load_photo(faces_dir, photo)
    with tempfile.TemporaryDirectory(prefix="magtkd_sample_") as tmp:
        track, utterances = synthesize(Path(tmp))
    media, script = out_dir / MEDIA_NAME, out_dir / SCRIPT_NAME
    duration = write_media(media, faces_dir, track, utterances)
    doc = {
        "media": MEDIA_NAME,
        "made_by": "demo/make_sample.py",
        "duration": round(duration, 3),
        "labels": "MELD emotion labels",
        "video": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "codec": "h264"},
        "audio": {"sample_rate": AUDIO_RATE, "channels": 1, "codec": "aac"},
        "speakers": [
            {"name": s.voice.name, "espeak_voice": s.voice.espeak_voice, "pitch": s.voice.pitch,
             "rate": s.voice.rate, "face_source": f"{FACES_DATASET} identity {s.identity}",
             "framing": s.framing}
            for s in SPEAKERS
        ],
        "utterances": utterances,
    }
    script.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return media, script


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make the demo conversation sample (mp4 + json script).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--faces", type=Path, default=None,
                        help=f"the {FACES_DATASET} folder (default $MAGTKD_DATA/{FACES_DATASET} or "
                             f"../shared/data/{FACES_DATASET})")
    parser.add_argument("--check-only", action="store_true", help="only check an existing sample in --out")
    args = parser.parse_args(argv)
    from demo.sample_check import check_sample  # imports this module's layout constants

    media, script = args.out / MEDIA_NAME, args.out / SCRIPT_NAME
    if not args.check_only:
        media, script = make_sample(args.out, args.faces)
    elif not (media.is_file() and script.is_file()):
        print(f"make_sample: {media} or {script} is missing; run without --check-only first", file=sys.stderr)
        return 2
    problems = check_sample(media, script)
    for p in problems:
        print(f"make_sample: {p}", file=sys.stderr)
    doc = json.loads(script.read_text(encoding="utf-8"))
    print(f"{media} ({media.stat().st_size} bytes, {doc['duration']} s, {len(doc['utterances'])} utterances): "
          + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
