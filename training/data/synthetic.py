"""A small synthetic dataset in the exact MELD layout, so every stage runs in CI in seconds.

It writes train/dev/test CSVs with MELD's columns and dia{D}_utt{U}.mp4 clips in
MELD's folder names. Every modality carries the label: the sentence is chosen
per emotion (text), espeak-ng speaks it with an emotion-dependent pitch, rate
and loudness on top of a per-speaker voice (audio), and the frames show an
emotion-coloured shape moving in an emotion-specific way (video). With
`defects=True` it reproduces MELD's known defects in miniature: one corrupt
train clip, one missing dev clip and one over-long test clip.

CLI: python -m training.data.synthetic OUT_DIR [--dialogues N] [--seed S] [--no-clips] [--defects]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from magtkd_stream.labels import FER2013_LABELS, FER2013_TO_MELD, MELD_LABELS
from magtkd_stream.resources import require

from .meld import CLIP_FOLDERS, CSV_COLUMNS, CSV_NAMES

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "dev", "test")
FPS = 12
SIZE = 96
AUDIO_RATE = 22050  # espeak-ng's native rate; loaders resample to 16 kHz
LONG_CLIP_S = 40.0  # longer than load_meld's default cap of 30 s
MANIFEST = "synthetic.json"

SENTENCES: dict[str, tuple[str, ...]] = {
    "anger": (
        "I am so angry with you right now!",
        "Stop it, this makes me furious!",
        "How dare you do this to me!",
        "I hate it when you lie to me!",
    ),
    "disgust": (
        "Ew, that is disgusting.",
        "This food smells revolting.",
        "That is gross, it makes me sick.",
        "Yuck, get that thing away from me.",
    ),
    "fear": (
        "I am scared, something is out there.",
        "Please help me, I am terrified.",
        "I’m afraid of the dark.",
        "What was that noise? I am frightened.",
    ),
    "joy": (
        "I am so happy today!",
        "This is wonderful news, I love it!",
        "We won! This is the best day ever!",
        "Great, I’m really glad you came!",
    ),
    "neutral": (
        "The meeting starts at three.",
        "I put the keys on the table.",
        "We need to buy some milk.",
        "The train leaves from platform two.",
    ),
    "sadness": (
        "I feel so sad and lonely.",
        "I miss her so much, I want to cry.",
        "Nothing ever goes right for me.",
        "I’m sorry, it was a terrible loss.",
    ),
    "surprise": (
        "Wow, I did not expect that!",
        "What? Really? No way!",
        "Oh my god, you are here!",
        "I can’t believe it, what a surprise!",
    ),
}

SENTIMENT = {"anger": "negative", "disgust": "negative", "fear": "negative", "joy": "positive",
             "neutral": "neutral", "sadness": "negative", "surprise": "positive"}


@dataclass(frozen=True)
class Voice:
    name: str
    espeak_voice: str
    pitch: int  # espeak-ng -p, 0..99
    rate: int  # espeak-ng -s, words per minute
    colour: tuple[int, int, int]  # BGR marker drawn in the frame corner


SPEAKERS: tuple[Voice, ...] = (
    Voice("Alice", "en-us+f3", 62, 165, (40, 200, 40)),
    Voice("Bob", "en-gb+m3", 38, 150, (200, 40, 40)),
    Voice("Carol", "en-us+f2", 70, 185, (40, 40, 200)),
    Voice("Dave", "en-us+m1", 30, 140, (200, 200, 40)),
)

# emotion -> (pitch shift, rate shift, amplitude): prosody that carries the label.
PROSODY: dict[str, tuple[int, int, int]] = {
    "anger": (5, 25, 180), "disgust": (-10, -20, 110), "fear": (20, 30, 90), "joy": (20, 15, 140),
    "neutral": (0, 0, 100), "sadness": (-20, -45, 70), "surprise": (25, 10, 150),
}

# emotion -> BGR background colour of the frames.
COLOURS: dict[str, tuple[int, int, int]] = {
    "anger": (30, 30, 220), "disgust": (40, 160, 60), "fear": (140, 40, 120), "joy": (40, 220, 240),
    "neutral": (128, 128, 128), "sadness": (200, 90, 30), "surprise": (30, 140, 250),
}


def _format_time(seconds: float) -> str:
    """MELD's episode time format, e.g. 00:14:38,127."""
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def speak(text: str, voice: Voice, emotion: str, workdir: Path) -> np.ndarray:
    """int16 mono samples at AUDIO_RATE of espeak-ng speaking `text`."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng is needed to synthesize speech but is not on PATH; install it "
            "(Debian/Ubuntu: apt-get install espeak-ng) or pass with_clips=False"
        )
    dp, dr, amp = PROSODY[emotion]
    wav = workdir / "speech.wav"
    cmd = [exe, "-v", voice.espeak_voice, "-p", str(max(0, min(99, voice.pitch + dp))),
           "-s", str(max(80, voice.rate + dr)), "-a", str(amp), "-w", str(wav), text]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({proc.returncode}) for {text!r}: {proc.stderr.strip()}")
    with wave.open(str(wav), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != AUDIO_RATE:
            raise RuntimeError(f"unexpected espeak-ng output format in {wav}")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).copy()


def _frames(emotion: str, voice: Voice, n: int, rng: np.random.Generator,
            face: np.ndarray | None) -> np.ndarray:
    """(n, SIZE, SIZE, 3) uint8 BGR frames whose colour, shape and motion follow the emotion."""
    k = MELD_LABELS.index(emotion)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = np.empty((SIZE, SIZE, 3), np.uint8)
    base[:] = COLOURS[emotion]
    base[4:14, 4:14] = voice.colour  # speaker marker
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    radius = 10 + 2 * k
    for i in range(n):
        frame = base.copy()
        phase = 2 * np.pi * i / max(n, 1)
        cx = SIZE / 2 + (20 if k % 2 else 10) * np.cos(phase * (1 + k % 3))
        cy = SIZE / 2 + (5 + 3 * k) * np.sin(phase * (1 + k % 2))
        if k % 2:
            mask = (np.abs(xx - cx) < radius) & (np.abs(yy - cy) < radius)  # squares
        else:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2  # discs
        frame[mask] = 255
        if face is not None:
            off = (SIZE - face.shape[0]) // 2
            frame[off : off + face.shape[0], off : off + face.shape[1]] = face[..., None]
        noise = rng.integers(-6, 7, size=frame.shape, dtype=np.int16)
        out[i] = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out


class _Faces:
    """Real FER2013 faces by MELD label, enlarged to 64x64 (optional)."""

    def __init__(self, npz_path: str | Path) -> None:
        with np.load(npz_path, allow_pickle=False) as z:
            self.images = z["images"]
            labels = z["labels"]
            names = [str(x) for x in z["label_names"]] if "label_names" in z.files else list(FER2013_LABELS)
        by_meld = [MELD_LABELS.index(FER2013_TO_MELD[n]) for n in names]
        self.index = {k: np.flatnonzero(np.isin(labels, [i for i, m in enumerate(by_meld) if m == k]))
                      for k in range(len(MELD_LABELS))}
        self.resize = (np.arange(64) * 48 // 64)

    def pick(self, emotion: str, rng: np.random.Generator) -> np.ndarray | None:
        idx = self.index.get(MELD_LABELS.index(emotion))
        if idx is None or len(idx) == 0:
            return None
        img = self.images[int(rng.choice(idx))]
        return img[self.resize][:, self.resize]


def video_codec(av) -> str:
    """The first H.264 (else MPEG-4) encoder this PyAV build has: the codec media files are written with."""
    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - codec not built into this FFmpeg
            continue
    raise RuntimeError("this FFmpeg build has no H.264 or MPEG-4 encoder; cannot write clips")


def _write_clip(path: Path, frames: np.ndarray, samples: np.ndarray, vcodec: str) -> None:
    """Mux BGR frames (FPS) and int16 mono samples (AUDIO_RATE) into an mp4 (video + AAC)."""
    av = require("av", "av", why="writing synthetic clips")
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream(vcodec, rate=FPS)
        vs.width, vs.height, vs.pix_fmt = SIZE, SIZE, "yuv420p"
        if vcodec == "libx264":
            vs.options = {"preset": "ultrafast", "tune": "zerolatency"}
        aus = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        aus.options = {"aac_coder": "fast"}
        pcm = (samples.astype(np.float32) / 32768.0).reshape(1, -1)
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="bgr24")
            vf.pts = i
            vf.time_base = Fraction(1, FPS)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        for start in range(0, pcm.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(pcm[:, start : start + 1024], format="fltp", layout="mono")
            af.sample_rate = AUDIO_RATE
            af.pts = start
            af.time_base = Fraction(1, AUDIO_RATE)
            out.mux(aus.encode(af))
        out.mux(aus.encode(None))


def _split_sizes(n_dialogues: int | Mapping[str, int]) -> dict[str, int]:
    sizes = dict(n_dialogues) if isinstance(n_dialogues, Mapping) else {s: int(n_dialogues) for s in SPLITS}
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected some of {list(SPLITS)}")
    for split in SPLITS:
        if sizes.setdefault(split, 0) < 1:
            raise ValueError(f"every split needs at least one dialogue; {split!r} has {sizes[split]}")
    return sizes


def make_synthetic_meld(
    out_dir: str | Path,
    n_dialogues: int | Mapping[str, int] = 6,
    utts_per_dialogue: tuple[int, int] = (3, 5),
    seed: int = 0,
    with_clips: bool = True,
    defects: bool = False,
    faces: str | Path | None = None,
) -> Path:
    """Write a MELD-layout dataset into `out_dir` and return it.

    n_dialogues: dialogues per split (an int for every split, or {"train": 8, "dev": 2, "test": 2}).
    utts_per_dialogue: inclusive (min, max) utterances per dialogue.
    defects: also write one corrupt train clip (truncated, no index), leave one dev clip
    missing, and stretch one test clip to LONG_CLIP_S seconds. Which ones is written to
    out_dir/synthetic.json. faces: an optional FER2013-style .npz whose faces are pasted
    in the frames (the generator needs no real data without it).
    """
    lo, hi = utts_per_dialogue
    if not 1 <= lo <= hi:
        raise ValueError(f"utts_per_dialogue must be (min, max) with 1 <= min <= max, got {utts_per_dialogue}")
    if defects and not with_clips:
        raise ValueError("defects=True needs with_clips=True (the defects are clip defects)")
    sizes = _split_sizes(n_dialogues)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    av = require("av", "av", why="writing synthetic clips") if with_clips else None
    vcodec = video_codec(av) if with_clips else ""
    face_bank = _Faces(faces) if faces is not None and with_clips else None
    manifest: dict = {"seed": seed, "n_dialogues": sizes, "with_clips": with_clips, "defects": {}, "counts": {}}
    with tempfile.TemporaryDirectory(prefix="synthetic_meld_") as tmp:
        for split in SPLITS:
            rows, clips = _plan_split(split, sizes[split], lo, hi, rng)
            clip_dir = out / CLIP_FOLDERS[split]
            if with_clips:
                clip_dir.mkdir(exist_ok=True)
                defect = _defect_for(split, rows) if defects else None
                if defect is not None:
                    manifest["defects"][defect[0]] = f"{CLIP_FOLDERS[split]}/{defect[1]}"
                for row, (voice, emotion) in zip(rows, clips):
                    name = f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}.mp4"
                    kind = defect[0] if defect is not None and defect[1] == name else None
                    if kind == "missing":
                        continue
                    samples = speak(row["Utterance"], voice, emotion, Path(tmp))
                    if kind == "long":
                        samples = np.concatenate([samples, np.zeros(int(LONG_CLIP_S * AUDIO_RATE) - len(samples), np.int16)])
                    duration = len(samples) / AUDIO_RATE + 0.2
                    face = face_bank.pick(emotion, rng) if face_bank is not None else None
                    frames = _frames(emotion, voice, int(np.ceil(duration * FPS)), rng, face)
                    _write_clip(clip_dir / name, frames, samples, vcodec)
                    if kind == "corrupt":
                        data = (clip_dir / name).read_bytes()
                        (clip_dir / name).write_bytes(data[: len(data) // 3])
            with open(out / CSV_NAMES[split], "w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
                writer.writeheader()
                writer.writerows(rows)
            manifest["counts"][split] = {"dialogues": sizes[split], "utterances": len(rows)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return out


def _plan_split(split: str, n: int, lo: int, hi: int, rng: np.random.Generator):
    """CSV rows of one split plus (voice, emotion) per row; labels cycle so every class appears."""
    rows: list[dict[str, str]] = []
    clips: list[tuple[Voice, str]] = []
    order: list[str] = []
    clock = 60.0 * float(rng.integers(1, 20))
    for d in range(n):
        pair = rng.choice(len(SPEAKERS), size=2, replace=False)
        season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
        for u in range(int(rng.integers(lo, hi + 1))):
            if not order:
                order = [MELD_LABELS[i] for i in rng.permutation(len(MELD_LABELS))]
            emotion = order.pop()
            voice = SPEAKERS[int(pair[u % 2])]
            text = SENTENCES[emotion][int(rng.integers(len(SENTENCES[emotion])))]
            length = 0.6 + 0.08 * len(text.split())
            rows.append({
                "Sr No.": str(len(rows) + 1), "Utterance": text, "Speaker": voice.name,
                "Emotion": emotion, "Sentiment": SENTIMENT[emotion], "Dialogue_ID": str(d),
                "Utterance_ID": str(u), "Season": str(season), "Episode": str(episode),
                "StartTime": _format_time(clock), "EndTime": _format_time(clock + length),
            })
            clips.append((voice, emotion))
            clock += length + 0.3
    return rows, clips


def _defect_for(split: str, rows: list[dict[str, str]]) -> tuple[str, str] | None:
    """Which clip of a split carries a defect: train corrupt, dev missing, test long."""
    kind = {"train": "corrupt", "dev": "missing", "test": "long"}.get(split)
    if kind is None or not rows:
        return None
    first = [r for r in rows if r["Dialogue_ID"] == rows[0]["Dialogue_ID"]]
    row = first[-1]
    return kind, f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}.mp4"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.synthetic",
                                     description="Write a small synthetic dataset in the MELD layout.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dialogues", type=int, default=6, help="dialogues per split (default 6)")
    parser.add_argument("--min-utts", type=int, default=3)
    parser.add_argument("--max-utts", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-clips", action="store_true", help="write the CSVs only")
    parser.add_argument("--defects", action="store_true", help="one corrupt, one missing, one long clip")
    parser.add_argument("--faces", type=Path, default=None, help="FER2013-style .npz of faces to paste in frames")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = make_synthetic_meld(args.out_dir, args.dialogues, (args.min_utts, args.max_utts), args.seed,
                              with_clips=not args.no_clips, defects=args.defects, faces=args.faces)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
