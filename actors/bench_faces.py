"""What face detection costs per video frame, by the size frames are shrunk to first.

The video actor detects a face in every kept frame while speech goes on
(`stream.crop_fps` per session), on the same CPU cores as the ASR, so its cost
per frame sets how much of the machine four live sessions leave to the ASR.
`encoders.video.detector` picks the detector (the lite profile's: BlazeFace,
whose input size is fixed) and `encoders.video.detect_side` the size the Haar
cascade shrinks frames to; this prints, for each size asked for, the CPU and
wall time per frame and how many frames had a face, as JSON.
It also times the frames in video order through one FaceTracker, as a live
session's frames go: most are then searched only near the face found before.

    python -m actors.bench_faces demo/samples/conversation.mp4
    python -m actors.bench_faces demo/samples/conversation.mp4 --detector haar --sides 480 320 240
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from magtkd_stream.encoders.face import FaceTracker, make_detector


def sample_frames(path: Path, count: int) -> list[np.ndarray]:
    """`count` BGR frames spread over the whole video (fewer when it is shorter)."""
    import av

    accepted = "give a video file (mp4, mkv, webm, ...)"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream; {accepted}")
            frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path} could not be read as a video ({exc.strerror or exc}); {accepted}") from exc
    if not frames:
        raise ValueError(f"{path}: no video frame could be decoded")
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return [frames[i] for i in picks]


def measure(frames: Sequence[np.ndarray], side: Optional[int], kind: str = "haar",
            repeats: int = 3) -> dict[str, Any]:
    """Best of `repeats` passes over the frames at one detection size (None: BlazeFace's own; a warm-up pass first)."""
    detector = make_detector(kind) if side is None else make_detector(kind, side)
    found = sum(bool(detector.detect(f)) for f in frames)  # warm-up; also counts the frames with a face
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        for frame in frames:
            detector.detect(frame)
        cpu.append((time.process_time() - c0) * 1e3 / len(frames))
        wall.append((time.perf_counter() - w0) * 1e3 / len(frames))
    tracked_cpu, tracked_found, whole_searches = [], 0, 0
    for _ in range(repeats):
        tracker = FaceTracker()
        c0, tracked_found, whole_searches = time.process_time(), 0, 0
        for frame in frames:
            tracked_found += tracker.find(detector, frame) is not None
            whole_searches += tracker.since_whole == 0
        tracked_cpu.append((time.process_time() - c0) * 1e3 / len(frames))
    return {"side": side, "cpu_ms_per_frame": round(min(cpu), 1), "wall_ms_per_frame": round(min(wall), 1),
            "frames_with_face": found, "frames": len(frames),
            "tracked_cpu_ms_per_frame": round(min(tracked_cpu), 1), "tracked_frames_with_face": tracked_found,
            "tracked_whole_frame_searches": whole_searches}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.bench_faces", description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path, help="video file whose frames are measured")
    parser.add_argument("--detector", choices=("blazeface", "haar"), default="blazeface",
                        help="face detector (default blazeface, the lite profile's)")
    parser.add_argument("--sides", type=int, nargs="+", default=None,
                        help="haar only: longest sides to shrink frames to before detection (default 480 320 240)")
    parser.add_argument("--frames", type=int, default=40, help="frames spread over the video (default 40)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        parser.error(f"{args.video}: no such file")
    if args.detector == "blazeface" and args.sides is not None:
        parser.error("--sides applies to --detector haar only; BlazeFace's input size is fixed")
    args.sides = args.sides or [480, 320, 240]
    if args.frames < 1 or any(s < 64 for s in args.sides):
        parser.error("--frames must be >= 1 and every --sides value >= 64 pixels")
    try:
        frames = sample_frames(args.video, args.frames)
    except ValueError as exc:
        parser.error(str(exc))
    import cv2

    report = {
        "benchmark": f"{'BlazeFace' if args.detector == 'blazeface' else 'Haar'} face detection per frame"
                     + (", by detection size" if args.detector == "haar" else ""),
        "video": str(args.video),
        "frame_shape": list(frames[0].shape),
        "opencv_threads": cv2.getNumThreads(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": [measure(frames, None, "blazeface")] if args.detector == "blazeface"
        else [measure(frames, side, "haar") for side in args.sides],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
