"""Media files, the one place they are decoded: the service's replay, training's loaders and the demo share it.

files:  probe a file's header; 16 kHz mono audio and time-sampled BGR frames of a span.
stream: a whole file as the timed audio chunks and frames a live client would send.
mux:    write BGR frames and mono PCM into an mp4.
"""

from magtkd_stream.media.files import (
    ACCEPTED,
    MediaError,
    MediaInfo,
    MediaNotFound,
    MediaSpan,
    load_audio,
    load_frames,
    open_container,
    probe,
)
from magtkd_stream.media.mux import mux_mp4
from magtkd_stream.media.stream import AudioChunk, Frame, MediaItem, decode

__all__ = [
    "ACCEPTED", "AudioChunk", "Frame", "MediaError", "MediaInfo", "MediaItem", "MediaNotFound", "MediaSpan",
    "decode", "load_audio", "load_frames", "mux_mp4", "open_container", "probe",
]
