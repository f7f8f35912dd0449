"""Headless Chromium driven over the DevTools protocol: open a page, run JavaScript, wait, take a screenshot.

The browser page's test and the screenshot command both drive the real page
in a real browser; this is the little they share. Chromium's own fake
microphone (--use-fake-device-for-media-stream) lets the page publish audio
without a sound card.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

BROWSERS: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome")


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[int]:
    """A quiet HTTP server for `folder` on 127.0.0.1 (a free port, in a thread) while the block runs; its port."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    quiet = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()


def find_browser() -> Optional[str]:
    """The first Chromium or Chrome on PATH, or None."""
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class HeadlessPage:
    """One browser tab (context manager): `js`, `wait_for`, `navigate`, `screenshot`."""

    def __init__(self, browser: Optional[str] = None, width: int = 1200, height: int = 800,
                 user_data_dir: Optional[Path] = None) -> None:
        found = browser or find_browser()
        if found is None:
            raise FileNotFoundError(f"no Chromium/Chrome on PATH (looked for {', '.join(BROWSERS)})")
        self.browser, self.width, self.height = found, width, height
        self._tmp = None if user_data_dir else tempfile.TemporaryDirectory(prefix="magtkd-chromium-")
        self.profile = Path(user_data_dir or self._tmp.name)  # type: ignore[union-attr]
        self._ids = itertools.count(1)
        self.proc: Optional[subprocess.Popen] = None
        self.dev: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "HeadlessPage":
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [self.browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.is_file() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        else:
            self.__exit__()
            raise TimeoutError(f"{self.browser} did not open its DevTools port within 30 s")
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.dev = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()  # the DevTools connection
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._tmp is not None:
            self._tmp.cleanup()

    def call(self, method: str, params: Optional[dict] = None, timeout: float = 20.0) -> dict:
        """One DevTools command; its result (events arriving meanwhile are skipped)."""
        i = next(self._ids)
        self.dev.send(json.dumps({"id": i, "method": method, "params": params or {}}))
        while (reply := json.loads(self.dev.recv(timeout=timeout))).get("id") != i:
            pass
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def js(self, expr: str) -> Any:
        """Evaluate in the page (promises awaited); the value, as JSON."""
        result = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def wait_for(self, expr: str, timeout: float = 20.0, describe: str = "") -> None:
        """Poll `expr` until it is truthy; AssertionError naming it (and `describe`'s value) after timeout."""
        end = time.monotonic() + timeout
        while not self.js(expr):
            if time.monotonic() > end:
                raise AssertionError(f"{expr} never held" + (f"; {describe}: {self.js(describe)}" if describe else ""))
            time.sleep(0.2)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
