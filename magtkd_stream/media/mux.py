"""Writing an mp4 from BGR frames and mono PCM: the demo sample and composed conversations."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Union

import numpy as np

from magtkd_stream.resources import require


def mux_mp4(path: Union[str, Path], frames: Iterable[np.ndarray], pcm: np.ndarray, sample_rate: int, fps: int,
              size: tuple[int, int], vcodec: str, video_options: dict[str, str], audio_bitrate: int) -> None:
    """Mux BGR frames (at `fps`, width x height = size) and float32 mono `pcm` (AAC) into an mp4, interleaved.

    After each frame, the audio up to that frame's end is muxed in 1024-sample
    AAC frames, so players and the service's decoder never wait on one stream.
    """
    av = require("av", "av", why="writing mp4 files")
    pcm = np.ascontiguousarray(np.asarray(pcm, dtype=np.float32).reshape(1, -1))
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        vs = out.add_stream(vcodec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        if video_options:
            vs.options = dict(video_options)
        aus = out.add_stream("aac", rate=sample_rate, layout="mono")
        aus.bit_rate = audio_bitrate
        sent = 0
        for i, image in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(image, format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(vf))
            upto = min(pcm.shape[1], int((i + 1) * sample_rate / fps))
            while sent + 1024 <= upto or (upto == pcm.shape[1] and sent < upto):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, sent : sent + 1024]), format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts, af.time_base = sample_rate, sent, Fraction(1, sample_rate)
                out.mux(aus.encode(af))
                sent += af.samples
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))
