"""Render a planned conversation (training/devset/compose.py) into conv-XXX.mp4 and its script conv-XXX.json.

Why these choices:
- Audio is one 16 kHz mono track. Each utterance's leading/trailing silence is
  cut so the script's start/end mark the speech itself, and pauses inside it are
  shortened (the product's VAD closes an utterance after 300 ms of silence).
- RAVDESS actors keep their own loudness between emotions (loud anger, soft
  sadness are part of the voice cue): one gain per actor, from the median level
  of the actor's neutral and calm clips. espeak-ng lines, flat by design, are
  each brought to the same level. No utterance peaks above PEAK (AAC headroom).
- Pictures: the speaker's photo scaled to FACE_HEIGHT px on a plain background,
  at a position per speaker, with a small name tag. Each utterance's picture is
  shown from the midpoint of the silence before it to the midpoint of the
  silence after it, so the frames of the product's padded utterance span show
  only that utterance's face. A face marked absent is the background alone.
- Each shown face is checked with the product's own Haar detector; the script
  records `face_detectable`, so a scorer can tell detector misses from absent faces.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from magtkd_stream.labels import MELD_LABELS
from training.devset.compose import TAIL_S, ConversationPlan, Sources, SpeakerPlan, UtterancePlan
from magtkd_stream.media import MediaSpan, load_audio, mux_mp4
from magtkd_stream.names import SAMPLE_RATE

log = logging.getLogger(__name__)

SR = SAMPLE_RATE
WIDTH, HEIGHT, FPS = 640, 480, 12
FACE_HEIGHT = 260
FACE_MAX_WIDTH = 320
CRF, PRESET, AUDIO_BITRATE = 28, "veryfast", 48_000
TARGET_RMS = 0.05  # speech level (of full scale) of espeak lines and of an actor's neutral clips
PEAK = 0.7
MAX_PAUSE_S = 0.18
HOP = SR // 100  # 10 ms analysis frames
POSITIONS = (200, 440, 320)  # x centre of the face of speaker 0, 1, 2
BACKGROUNDS = ((96, 96, 96), (104, 98, 90), (90, 98, 106))  # BGR per speaker


# ------------------------------------------------------------------ audio
def frame_rms(x: np.ndarray) -> np.ndarray:
    n = len(x) // HOP
    return np.sqrt(np.mean(x[: n * HOP].reshape(n, HOP) ** 2, axis=1)) if n else np.zeros(0)


def _speech_threshold(rms: np.ndarray) -> float:
    """Loud enough to be speech: relative to the clip's loudest 10 ms, above its noise floor."""
    return max(0.06 * float(rms.max()), 3.0 * float(np.percentile(rms, 10)), 1e-4)


def trim(x: np.ndarray, pad_s: float = 0.03) -> np.ndarray:
    """Cut leading and trailing silence, keeping pad_s around the speech."""
    rms = frame_rms(x)
    if not len(rms) or rms.max() <= 0:
        raise ValueError("no speech in the clip")
    loud = np.flatnonzero(rms >= _speech_threshold(rms))
    pad = int(pad_s * SR)
    return x[max(0, loud[0] * HOP - pad): min(len(x), (loud[-1] + 1) * HOP + pad)]


def shorten_pauses(x: np.ndarray, max_pause_s: float = MAX_PAUSE_S) -> np.ndarray:
    """Shorten every pause inside the speech to max_pause_s (its middle is dropped, its edges kept)."""
    rms = frame_rms(x)
    quiet = rms < _speech_threshold(rms)
    keep = np.ones(len(x), bool)
    limit = int(max_pause_s * 100)
    i = 0
    while i < len(quiet):
        if not quiet[i]:
            i += 1
            continue
        j = i
        while j < len(quiet) and quiet[j]:
            j += 1
        if j - i > limit:
            lo = (i + limit // 2) * HOP
            keep[lo: lo + (j - i - limit) * HOP] = False
        i = j
    return x[keep]


def speech_rms(x: np.ndarray) -> float:
    rms = frame_rms(x)
    loud = rms[rms >= _speech_threshold(rms)]
    return float(np.sqrt(np.mean(loud ** 2))) if len(loud) else 0.0


def espeak(text: str, voice: str, pitch: int, rate: int, workdir: Path) -> np.ndarray:
    """float32 samples at SR of espeak-ng speaking `text` with a flat voice."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not on PATH (Debian/Ubuntu: apt-get install espeak-ng)")
    wav = workdir / "line.wav"
    proc = subprocess.run([exe, "-v", voice, "-p", str(pitch), "-s", str(rate), "-w", str(wav), text],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({proc.returncode}) for {text!r}: {proc.stderr.strip()}")
    with wave.open(str(wav), "rb") as w:
        rate_in = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    if rate_in != SR:
        from math import gcd

        g = gcd(rate_in, SR)
        x = resample_poly(x, SR // g, rate_in // g).astype(np.float32)
    return x


def _limit(x: np.ndarray, gain: float) -> np.ndarray:
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak * gain > PEAK:
        gain = PEAK / peak
    return (x * gain).astype(np.float32)


# ------------------------------------------------------------------ pictures
def _name_tag(img: np.ndarray, name: str) -> None:
    import cv2

    cv2.rectangle(img, (10, 10), (30 + 13 * len(name), 38), (30, 30, 30), -1)
    cv2.putText(img, name, (18, 31), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (240, 240, 240), 1, cv2.LINE_AA)


def place_face(photo: np.ndarray, slot: int) -> np.ndarray:
    """The photo scaled to FACE_HEIGHT px on the speaker's plain background, HEIGHT x WIDTH BGR."""
    import cv2

    canvas = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    canvas[:] = BACKGROUNDS[slot % len(BACKGROUNDS)]
    if photo.ndim == 2:
        photo = cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR)
    h, w = photo.shape[:2]
    scale = min(FACE_HEIGHT / h, FACE_MAX_WIDTH / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    face = cv2.resize(photo, (nw, nh), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    cx, cy = POSITIONS[slot % len(POSITIONS)], HEIGHT // 2
    x0, y0 = max(0, min(WIDTH - nw, cx - nw // 2)), max(0, min(HEIGHT - nh, cy - nh // 2))
    canvas[y0: y0 + nh, x0: x0 + nw] = face
    return canvas


def blank(slot: int) -> np.ndarray:
    canvas = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    canvas[:] = BACKGROUNDS[slot % len(BACKGROUNDS)]
    return canvas


# ------------------------------------------------------------------ writing
def write_mp4(path: Path, pictures: list[np.ndarray], switch_at: list[float], track: np.ndarray) -> float:
    """Mux H.264 frames (picture k from switch_at[k]) and the mono AAC track; returns the duration."""
    duration = len(track) / SR
    n_frames = int(np.ceil(duration * FPS))

    def frames() -> Iterator[np.ndarray]:
        k = 0
        for i in range(n_frames):
            while k + 1 < len(switch_at) and switch_at[k + 1] <= i / FPS:
                k += 1
            yield pictures[k]

    mux_mp4(path, frames(), track, SR, FPS, (WIDTH, HEIGHT), "libx264",
              {"crf": str(CRF), "preset": PRESET, "g": str(2 * FPS), "threads": "1"}, AUDIO_BITRATE)
    return duration


class Renderer:
    """Renders plans of one split; caches actor gains, FER images and the face detector across conversations."""

    def __init__(self, sources: Sources) -> None:
        self.src = sources
        self._gains: dict[int, float] = {}
        self._fer: Optional[np.ndarray] = None
        self._detector: Any = None

    # --- audio
    def _clip(self, name: str) -> np.ndarray:
        path = self.src.root / "ravdess" / "speech_16k" / name
        return load_audio(MediaSpan(str(path)), sr=SR).astype(np.float32)

    def actor_gain(self, actor: int) -> float:
        if actor not in self._gains:
            levels = [speech_rms(trim(self._clip(n))) for n in self.src.ravdess[actor]["neutral"]]
            self._gains[actor] = TARGET_RMS / max(float(np.median(levels)), 1e-4)
        return self._gains[actor]

    def speech(self, u: UtterancePlan, sp: SpeakerPlan, workdir: Path) -> np.ndarray:
        if u.speech["kind"] == "ravdess":
            x = shorten_pauses(trim(self._clip(u.speech["file"])))
            return _limit(x, self.actor_gain(int(u.speech["actor"])))
        x = shorten_pauses(trim(espeak(u.text, str(sp.espeak_voice), int(sp.pitch or 50), int(sp.rate or 160),
                                       workdir)))
        return _limit(x, TARGET_RMS / max(speech_rms(x), 1e-4))

    # --- pictures
    def photo(self, face: dict[str, Any]) -> np.ndarray:
        import cv2

        if face["kind"] == "muxspace":
            path = self.src.root / "faces_muxspace" / "images" / face["image"]
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(f"cannot read face image {path}")
            return img
        if self._fer is None:
            with np.load(self.src.root / "fer2013" / face["file"], allow_pickle=False) as z:
                self._fer = z["images"]
        return self._fer[int(face["index"])]

    def detectable(self, picture: np.ndarray) -> bool:
        if self._detector is None:
            from magtkd_stream.encoders.face import HaarFaceDetector

            self._detector = HaarFaceDetector()
        return bool(self._detector.detect(picture))

    # --- one conversation
    def render(self, plan: ConversationPlan, out: Path) -> dict[str, Any]:
        """Write plan.id.mp4 and plan.id.json into `out`; returns the script."""
        slots = {sp.name: k for k, sp in enumerate(plan.speakers)}
        by_name = {sp.name: sp for sp in plan.speakers}
        pieces: list[np.ndarray] = []
        spans: list[tuple[int, int]] = []
        cursor = 0
        with tempfile.TemporaryDirectory(prefix="magtkd_compose_") as tmp:
            for u in plan.utterances:
                gap = np.zeros(int(round(u.gap_before * SR)), np.float32)
                speech = self.speech(u, by_name[u.speaker], Path(tmp))
                pieces += [gap, speech]
                cursor += len(gap)
                spans.append((cursor, cursor + len(speech)))
                cursor += len(speech)
        pieces.append(np.zeros(int(TAIL_S * SR), np.float32))
        track = np.concatenate(pieces)
        pictures, switch_at, utterances = [], [], []
        for k, (u, (a, b)) in enumerate(zip(plan.utterances, spans)):
            slot = slots[u.speaker]
            shown = u.face["kind"] != "absent"
            pic = place_face(self.photo(u.face), slot) if shown else blank(slot)
            _name_tag(pic, u.speaker)
            pictures.append(pic)
            switch_at.append(0.0 if k == 0 else (spans[k - 1][1] + a) / 2 / SR)
            utterances.append({
                "index": u.index, "speaker": u.speaker, "start": round(a / SR, 3), "end": round(b / SR, 3),
                "emotion": u.emotion, "cue_type": u.cue_type, "cues": u.cues, "text": u.text,
                "face": "shown" if shown else "absent", "face_emotion": u.face.get("emotion"),
                "face_detectable": self.detectable(pic) if shown else False,
                "sources": {"speech": u.speech, "face": u.face if shown else "absent"},
            })
        media = out / f"{plan.id}.mp4"
        duration = write_mp4(media, pictures, switch_at, track)
        doc = {
            "id": plan.id, "split": plan.split, "seed": plan.seed, "media": media.name, "made_by": "training/devset/compose.py",
            "duration": round(duration, 3), "labels": list(MELD_LABELS),
            "video": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "codec": "h264", "face_height": FACE_HEIGHT},
            "audio": {"sample_rate": SR, "channels": 1, "codec": "aac"},
            "pictures": "each utterance's picture is shown from the midpoint of the silence before it to the "
                        "midpoint of the silence after it (the first from 0 s, the last to the end)",
            "speakers": [{"name": sp.name, "kind": sp.kind, "actor": sp.actor, "espeak_voice": sp.espeak_voice,
                          "pitch": sp.pitch, "rate": sp.rate, "identity": sp.identity, "slot": k}
                         for k, sp in enumerate(plan.speakers)],
            "utterances": utterances,
        }
        (out / f"{plan.id}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return doc
