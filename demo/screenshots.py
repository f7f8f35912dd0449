"""Screenshots of the two demos, taken from a real run of the sample (docs/screenshots/).

    python -m demo.screenshots --out docs/screenshots

Starts the recognizer (lite profile by default) behind a websocket gateway
on 127.0.0.1, opens the browser page in headless Chromium subscribed to a
session, and publishes the sample conversation into that session with the
desktop client (file mode, no window). Writes:

- desktop.png: the desktop window's picture (draw_overlay) as it stood when
  the emotion of utterance `--desktop-utterance` arrived;
- browser.png: the browser page after the session ended.

Nothing is staged: the labels are what the models said on this run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "demo" / "web"
SAMPLE = ROOT / "demo" / "samples" / "conversation.mp4"
SESSION = "sample"

log = logging.getLogger("demo.screenshots")


async def _publish_and_capture(url: str, token: str, media: Path, utterance: int, desktop: Path) -> None:
    """Publish `media` with the desktop client; save its window picture once `utterance`'s emotion is in."""
    import cv2

    from demo.live_client import ClientOptions, LiveClient
    from demo.live_view import blank_frame, draw_overlay

    client = LiveClient(ClientOptions(token=token, session=SESSION, url=url, file=media, fast=True, window=False,
                                      print_events=False, speaker=None))
    run = asyncio.create_task(client.run())
    saved = False
    while not run.done():
        frame, view = client.snapshot()
        if not saved and view.utterance is not None and view.utterance >= utterance and not view.interim:
            cv2.imwrite(str(desktop), draw_overlay(frame if frame is not None else blank_frame(), view))
            saved = True
        await asyncio.sleep(0.05)
    await run
    if not saved:  # fewer utterances than asked for: the last picture
        frame, view = client.snapshot()
        cv2.imwrite(str(desktop), draw_overlay(frame if frame is not None else blank_frame(), view))


async def _main(args: argparse.Namespace) -> None:
    from actors.gateway import Gateway
    from actors.pipeline import Pipeline
    from actors.serve import gateway_config
    from actors.sink import PipelineSink
    from demo.headless import HeadlessPage, serve_folder
    from magtkd_stream.config import load_config

    cfg = load_config(args.config, args.overrides)
    token = secrets.token_hex(8)
    pipeline = await asyncio.to_thread(Pipeline.start, cfg)
    gateway = Gateway(gateway_config(cfg, "127.0.0.1", 0, [token]), PipelineSink(pipeline))
    await gateway.start()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        url = f"ws://127.0.0.1:{gateway.port}/"
        with serve_folder(WEB) as http_port, HeadlessPage(width=args.width, height=args.height) as page:
            # The page's calls block; they run in a thread so that the gateway on this loop keeps answering.
            await asyncio.to_thread(page.navigate, f"http://127.0.0.1:{http_port}/index.html?url={url}"
                                    f"&token={token}&session={SESSION}")
            await asyncio.to_thread(page.js, "document.getElementById('subscribe').click()")
            await asyncio.to_thread(page.wait_for, "document.getElementById('status').textContent"
                                    ".startsWith('subscribed to')")
            await _publish_and_capture(url, token, args.media, args.desktop_utterance, args.out / "desktop.png")
            await asyncio.to_thread(page.wait_for, "document.getElementById('status').textContent"
                                    ".includes('ended')", 60.0)
            await asyncio.to_thread(page.screenshot, args.out / "browser.png")
    finally:
        await gateway.stop()
        await gateway.sink.close()  # type: ignore[attr-defined]
        pipeline.stop()
    for name in ("desktop.png", "browser.png"):
        print(f"wrote {args.out / name}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo.screenshots", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder (default docs/screenshots)")
    p.add_argument("--media", type=Path, default=SAMPLE, help="what to publish (default the sample conversation)")
    p.add_argument("--config", default="lite", help="profile (default lite)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--desktop-utterance", type=int, default=1,
                   help="the desktop picture is taken when this utterance's emotion arrives (0-based; default 1)")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=800)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if not args.media.is_file():
        print(f"screenshots: {args.media} is not a file", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(args))
    except FileNotFoundError as exc:  # no browser
        print(f"screenshots: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
