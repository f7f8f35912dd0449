"""The live client's OpenCV window: the latest emotion event drawn over the picture.

GUI toolkits want the main thread, so the window runs there while the client's
network coroutine runs in a background thread; the two share only the client's
snapshot() and request_stop().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from demo.live_messages import EventView
from magtkd_stream.labels import LABEL_COLOURS, OTHER_COLOUR

if TYPE_CHECKING:
    from demo.live_client import ClientResult, LiveClient

log = logging.getLogger(__name__)

# BGR (OpenCV's order) of the shared label colours; other labels get grey.
COLOURS: dict[str, tuple[int, int, int]] = {k: (b, g, r) for k, (r, g, b) in LABEL_COLOURS.items()}
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
PANEL_W = 260  # the side panel right of the picture


def colour(label: str | None) -> tuple[int, int, int]:
    return COLOURS.get(label or "", OTHER_COLOUR[::-1])


def blank_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """A dark canvas for sessions without video."""
    return np.full((height, width, 3), 32, np.uint8)


CAPTION_LINES = 3  # transcript lines in the caption strip under the picture
PER_SPEAKER_LINES = 4  # speakers listed with their latest emotion in a conversation
LINE_H = 22


def wrap_text(text: str, width_px: int, scale: float) -> list[str]:
    """Words wrapped into lines no wider than width_px at this font scale (a word longer than that is cut)."""
    import cv2

    def fits(s: str) -> bool:
        return cv2.getTextSize(s, FONT, scale, 1)[0][0] <= width_px

    lines: list[str] = []
    line = ""
    for word in text.split():
        while not fits(word):  # one word wider than the strip: cut it, the rest goes on the next line
            cut = max(1, len(word) - 1)
            while cut > 1 and not fits(word[:cut]):
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        trial = f"{line} {word}".strip()
        if fits(trial):
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def draw_overlay(frame: np.ndarray, view: EventView) -> np.ndarray:
    """The frame untouched, with a side panel on its right (status, fused label, bars, each modality's label)
    and a caption strip below it (the recent transcript, wrapped): nothing covers the picture, so neither its
    own captions nor its name tags are hidden."""
    import cv2

    picture = np.ascontiguousarray(frame)
    h, w = picture.shape[:2]
    text_w = w + PANEL_W - 20
    captions: list[str] = []
    for line in list(view.transcript) or ([view.text] if view.text else []):
        captions.extend(wrap_text(line, text_w, 0.5))
    captions = captions[-CAPTION_LINES:]
    strip = 12 + LINE_H * CAPTION_LINES
    per_speaker = min(len(view.speakers), PER_SPEAKER_LINES) if len(view.speakers) > 1 else 0
    rows = len(view.probs) + len(view.modalities) + per_speaker + 2
    out = np.full((max(h, 90 + LINE_H * rows) + strip, w + PANEL_W, 3), 24, np.uint8)
    out[:h, :w] = picture
    x0 = w
    status_lines = wrap_text(view.status, PANEL_W - 20, 0.42)[:2]
    for k, line in enumerate(status_lines):
        cv2.putText(out, line, (x0 + 10, 18 + 16 * k), FONT, 0.42, (200, 255, 200), 1, cv2.LINE_AA)
    y = 24 + 16 * len(status_lines)
    head = (view.label or "...") + (" (interim)" if view.interim else "")
    cv2.putText(out, head, (x0 + 10, y + 20), FONT, 0.8, colour(view.label), 2, cv2.LINE_AA)
    y += 28
    who = []
    if view.speaker:
        who.append(view.speaker)
    if view.utterance is not None:
        who.append(f"utterance {view.utterance + 1}")
    if view.e2e_ms is not None:
        who.append(f"latency {view.e2e_ms:.0f} ms")
    for line in wrap_text(", ".join(who), PANEL_W - 20, 0.42)[:2]:
        cv2.putText(out, line, (x0 + 10, y + 14), FONT, 0.42, (230, 230, 230), 1, cv2.LINE_AA)
        y += 16
    y += 8
    for name, p in view.probs.items():
        cv2.putText(out, f"{name[:9]:<9}", (x0 + 10, y + 12), FONT, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
        bar = int(round((PANEL_W - 130) * max(0.0, min(1.0, p))))
        cv2.rectangle(out, (x0 + 90, y + 2), (x0 + 90 + bar, y + 14), colour(name), -1)
        cv2.putText(out, f"{p:.2f}", (x0 + PANEL_W - 40, y + 12), FONT, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
        y += LINE_H
    for m, label in view.modalities.items():
        cv2.putText(out, f"{m}: {label or 'absent'}", (x0 + 10, y + 12), FONT, 0.42, colour(label), 1, cv2.LINE_AA)
        y += LINE_H
    if len(view.speakers) > 1:  # a conversation: each speaker's latest emotion
        for name, label in list(view.speakers.items())[-PER_SPEAKER_LINES:]:
            cv2.putText(out, f"{name[:14]}: {label}", (x0 + 10, y + 12), FONT, 0.42, colour(label), 1, cv2.LINE_AA)
            y += LINE_H
    base = out.shape[0] - strip
    for k, line in enumerate(captions):
        cv2.putText(out, line, (10, base + 22 + LINE_H * k), FONT, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def display_available() -> bool:
    """Whether an OpenCV window can open; without a display OpenCV's Qt backend aborts the process."""
    if sys.platform.startswith(("win", "darwin")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_in_window(client: "LiveClient") -> "ClientResult":
    """Network in a background thread, the OpenCV window in this (main) thread, as GUI toolkits require."""
    import cv2

    box: dict[str, Any] = {}

    def network() -> None:
        try:
            box["result"] = asyncio.run(client.run())
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    thread = threading.Thread(target=network, name="network", daemon=True)
    thread.start()
    title = f"magtkd_stream - {client.opts.session}"
    try:
        while thread.is_alive():
            frame, view = client.snapshot()
            cv2.imshow(title, draw_overlay(frame if frame is not None else blank_frame(), view))
            key = cv2.waitKey(30) & 0xFF
            if key in (ord("q"), 27) or cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                client.request_stop()
    except cv2.error as exc:
        log.warning("cannot show a window (%s); going on without one (use --no-window)", str(exc).strip()[:120])
    except KeyboardInterrupt:
        client.request_stop()
    finally:
        with contextlib.suppress(cv2.error):
            cv2.destroyAllWindows()
    while thread.is_alive():
        try:
            thread.join(0.2)
        except KeyboardInterrupt:
            client.request_stop()
    if "error" in box:
        raise box["error"]
    return box["result"]
