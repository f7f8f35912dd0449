"""Checks of a written demo sample: size, streams, audible speech, faces the service finds, words it hears.

Run by `python demo/make_sample.py` after writing (and with --check-only), and
by the demo tests; apart from the builder so that a check never needs the
photographs or espeak-ng that building does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from demo.make_sample import CAPTION_TOP, FPS
from magtkd_stream.media import MediaSpan, load_audio, load_frames, probe
from magtkd_stream.names import SAMPLE_RATE

MAX_BYTES = 2_000_000
MAX_WER = 0.15  # mean word error rate of the lite ASR over the lines: the words must come through


def face_detector() -> object:
    """The lite profile's own face detector (what the service crops faces with)."""
    from magtkd_stream.config import load_config
    from magtkd_stream.encoders.face import make_detector

    video = load_config("lite").encoders.video
    return make_detector(video.detector, video.detect_side)


def detect_faces(frame_bgr: np.ndarray, detector: object) -> list[tuple[int, int, int, int]]:
    """Faces the service's detector finds, as (x, y, w, h)."""
    return [tuple(int(v) for v in box) for box in detector.detect(frame_bgr)]


def check_sample(media: Path, script: Path) -> list[str]:
    """Problems found in a written sample (an empty list when it is good)."""
    problems: list[str] = []
    doc = json.loads(script.read_text(encoding="utf-8"))
    size = media.stat().st_size
    if size >= MAX_BYTES:
        problems.append(f"{media.name} is {size} bytes; keep it under {MAX_BYTES}")
    info = probe(media)
    if not (info.has_audio and info.has_video):
        problems.append(f"{media.name} needs an audio and a video stream (audio={info.has_audio}, video={info.has_video})")
    if info.duration is None or abs(info.duration - doc["duration"]) > 0.25:
        problems.append(f"duration {info.duration} s differs from the script's {doc['duration']} s")
    audio = load_audio(MediaSpan(str(media)), sr=SAMPLE_RATE)
    detector = face_detector()
    utts = doc["utterances"]
    frames = middle_frames(media, utts)
    for k, (u, frame) in enumerate(zip(utts, frames)):
        speech = audio[int(u["start"] * SAMPLE_RATE) : int(u["end"] * SAMPLE_RATE)]
        gap_end = utts[k + 1]["start"] if k + 1 < len(utts) else doc["duration"]
        gap = audio[int((u["end"] + 0.15) * SAMPLE_RATE) : int((gap_end - 0.15) * SAMPLE_RATE)]
        rms_speech = float(np.sqrt(np.mean(speech**2))) if len(speech) else 0.0
        rms_gap = float(np.sqrt(np.mean(gap**2))) if len(gap) else 0.0
        if not rms_speech > max(0.01, 5 * rms_gap):
            problems.append(f"utterance {k}: speech RMS {rms_speech:.4f} is not clearly above the gap's {rms_gap:.4f}")
        faces = detect_faces(frame, detector)
        if not faces:
            mid = (u["start"] + u["end"]) / 2
            problems.append(f"utterance {k} ({u['speaker']}, {mid:.2f} s): no face found by the service's face detector")
        elif max(y + h for _, y, _, h in faces) > CAPTION_TOP + 20:
            problems.append(f"utterance {k}: face {faces} overlaps the caption band")
    reads = face_readings(frames)
    print("face CNN's reading per line: " + ", ".join(f"{u['emotion']} -> {label} {p:.2f}"
                                                       for u, (label, p) in zip(utts, reads)))
    wer = word_error_rates(audio, utts)
    mean = float(np.mean(wer)) if wer else 1.0
    print(f"lite ASR word error rate per line: {' '.join(f'{w:.2f}' for w in wer)} (mean {mean:.3f})")
    if mean > MAX_WER:
        problems.append(f"the lite ASR mishears the lines: mean word error rate {mean:.3f} > {MAX_WER}; "
                        "choose clearer voices or slower rates")
    return problems


def middle_frames(media: Path, utterances: Sequence[dict]) -> list[np.ndarray]:
    """The BGR frame shown in the middle of each line."""
    out = []
    for u in utterances:
        mid = (u["start"] + u["end"]) / 2
        out.append(load_frames(MediaSpan(str(media), mid, mid + 1.0 / FPS), num_frames=1)[0])
    return out


def face_readings(frames: Sequence[np.ndarray]) -> list[tuple[str, float]]:
    """(label, probability) of the lite profile's face CNN on the face in each frame ("no face", 0.0 without one).

    Printed for information: this shows how the service's own video encoder
    crops and reads the photographs; it never chooses them.
    """
    import torch

    from magtkd_stream.config import load_config
    from magtkd_stream.encoders.face import FaceCNNEncoder, prepare_faces
    from magtkd_stream.encoders.face_cnn import FACE_CNN_LABELS

    encoder = FaceCNNEncoder(load_config("lite").encoders.video).eval()
    out = []
    for frame in frames:
        crop = encoder.crop_frame(frame)
        if crop is None:
            out.append(("no face", 0.0))
            continue
        with torch.no_grad():
            p = torch.softmax(encoder.cnn(torch.from_numpy(prepare_faces([crop], encoder.image_size))), -1)[0]
        k = int(p.argmax())
        out.append((FACE_CNN_LABELS[k], float(p[k])))
    return out


def word_error_rates(audio: np.ndarray, utterances: Sequence[dict]) -> list[float]:
    """Word error rate of the lite profile's ASR on each scripted line (case and punctuation ignored).

    The recognizer reads transcripts, so a sample whose voices the ASR mishears
    shows the ASR's mistakes, not the emotion model.
    """
    from magtkd_stream.streaming.asr import build_asr
    from magtkd_stream.config import load_config
    from training.metrics import word_error_rate

    asr = build_asr(load_config("lite").encoders.asr)
    out = []
    for u in utterances:
        speech = audio[max(0, int((u["start"] - 0.2) * SAMPLE_RATE)) : int((u["end"] + 0.2) * SAMPLE_RATE)]
        out.append(word_error_rate([u["text"]], [asr.transcribe(speech.astype(np.float32)).text]))
    return out
