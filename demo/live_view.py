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
PANEL_W = 230


def colour(label: str | None) -> tuple[int, int, int]:
    return COLOURS.get(label or "", OTHER_COLOUR[::-1])


def blank_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """A dark canvas for sessions without video."""
    return np.full((height, width, 3), 32, np.uint8)


def _shade(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int, keep: float = 0.35) -> None:
    """Darken a rectangle so white text on it stays readable over any picture."""
    region = frame[max(0, y0) : y1, max(0, x0) : x1]
    region[:] = (region.astype(np.float32) * keep).astype(np.uint8)


def draw_overlay(frame: np.ndarray, view: EventView) -> np.ndarray:
    """A copy of `frame` with the view drawn on it: fused label, bars, per-modality labels, transcript."""
    import cv2

    out = np.ascontiguousarray(frame).copy()
    h, w = out.shape[:2]
    x0 = max(0, w - PANEL_W)
    n = len(view.probs)
    _shade(out, x0, 0, w, 70 + 22 * n + 22 * len(view.modalities))
    head = view.label or "..."
    if view.interim:
        head += " (interim)"
    cv2.putText(out, head, (x0 + 10, 32), FONT, 0.8, colour(view.label), 2, cv2.LINE_AA)
    if view.speaker or view.utterance is not None:
        sub = f"{view.speaker or ''} #{view.utterance}" if view.utterance is not None else str(view.speaker)
        cv2.putText(out, sub.strip(), (x0 + 10, 54), FONT, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    y = 74
    for name, p in view.probs.items():
        cv2.putText(out, f"{name[:9]:<9}", (x0 + 10, y + 12), FONT, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
        bar = int(round((PANEL_W - 120) * max(0.0, min(1.0, p))))
        cv2.rectangle(out, (x0 + 90, y + 2), (x0 + 90 + bar, y + 14), colour(name), -1)
        cv2.putText(out, f"{p:.2f}", (x0 + PANEL_W - 36, y + 12), FONT, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
        y += 22
    for m, label in view.modalities.items():
        cv2.putText(out, f"{m}: {label or 'absent'}", (x0 + 10, y + 12), FONT, 0.42, colour(label), 1, cv2.LINE_AA)
        y += 22
    lines = list(view.transcript) or ([view.text] if view.text else [])
    if lines:
        _shade(out, 0, h - 12 - 24 * len(lines), w, h)
        for k, line in enumerate(lines):
            cv2.putText(out, line[:90], (10, h - 16 - 24 * (len(lines) - 1 - k)), FONT, 0.5, (255, 255, 255), 1,
                        cv2.LINE_AA)
    status = view.status + (f"  e2e {view.e2e_ms:.0f} ms" if view.e2e_ms is not None else "")
    _shade(out, 0, 0, min(x0, 10 + 8 * len(status)), 24)
    cv2.putText(out, status, (6, 16), FONT, 0.42, (200, 255, 200), 1, cv2.LINE_AA)
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
