"""Open a local HTML file in headless Chromium with the network off, through the Chrome DevTools
protocol over a pipe (``--remote-debugging-pipe``: no port, no download, nothing but the browser
the system has), and report what happened: every request the page made, every console error and
uncaught exception, the page's text, the time to its load event, and a screenshot.

Used by the tests (tests/test_html_browser.py), the page-size benchmark (bench_html.py) and the
README's screenshot (screenshot_html.py). The network is off twice over: every request goes to a
proxy on a port nothing listens on, and the page's requests are recorded (a self-contained page
makes none beyond its own file).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """The Chromium the system has (``SURGEON_CHROMIUM`` names another), or None."""
    named = os.environ.get("SURGEON_CHROMIUM")
    if named:
        return named
    return next((p for p in (shutil.which(b) for b in BROWSERS) if p), None)


@dataclass
class PageLoad:
    url: str
    load_seconds: float
    text: str
    verdicts: list[str]
    requests: list[str] = field(default_factory=list)
    """URLs the page asked for, its own excepted."""
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and failed loads."""
    screenshot: bytes = b""
    evaluated: str = ""
    """What ``script`` returned (as a string), run after the load."""


class _Pipe:
    """The DevTools protocol over the browser's fds 3 (commands in) and 4 (replies and events out),
    each message a JSON text ended by NUL."""

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int, read_fd: int) -> None:
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the browser did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed its DevTools pipe")
                self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\0")
        return json.loads(raw)

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        want = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for i, ev in enumerate(self.events):
            if ev["method"] == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg.get("method") == method:
                return msg
            if "method" in msg:
                self.events.append(msg)


def open_page(
    path: Path,
    width: int = 1280,
    height: int = 1600,
    scale: float = 1.0,
    timeout: float = 60,
    script: str | None = None,
) -> PageLoad:
    """Load ``path`` in headless Chromium (network off) and report what it did (see the module
    doc); ``script``: an expression evaluated in the page once loaded (its value in ``evaluated``)."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium, or set SURGEON_CHROMIUM)")
    url = path.resolve().as_uri()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds() -> None:  # copies first: a pipe end may already be fd 3 or 4 (and close on exec)
        ends = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(ends[0], 3)
        os.dup2(ends[1], 4)

    with tempfile.TemporaryDirectory(prefix="surgeon-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child_fds,  # noqa: PLW1509 (fds 3 and 4 are the protocol's)
            close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(proc, to_browser_w, from_browser_r)
        try:
            return _drive(pipe, url, width, height, scale, timeout, script)
        finally:
            try:
                pipe.send("Browser.close")
            except OSError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_browser_w)
            os.close(from_browser_r)


def _drive(
    pipe: _Pipe, url: str, width: int, height: int, scale: float, timeout: float, script: str | None
) -> PageLoad:
    targets = pipe.call("Target.getTargets", timeout=timeout)["targetInfos"]
    page = next(t for t in targets if t["type"] == "page")
    session = pipe.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.call(f"{domain}.enable", session=session)
    pipe.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": False},
        session=session,
    )
    t0 = time.perf_counter()
    nav = pipe.call("Page.navigate", {"url": url}, session=session)
    if nav.get("errorText"):
        raise RuntimeError(f"{url}: {nav['errorText']}")
    pipe.wait_event("Page.loadEventFired", timeout=timeout)
    load_seconds = time.perf_counter() - t0
    probe = (
        "JSON.stringify({text: document.body ? document.body.innerText : '', verdicts: "
        "Array.from(document.querySelectorAll('[data-verdict]')).map(e => e.getAttribute('data-verdict'))})"
    )
    found = json.loads(pipe.call("Runtime.evaluate", {"expression": probe}, session=session)["result"]["value"])
    evaluated = ""
    if script is not None:
        res = pipe.call("Runtime.evaluate", {"expression": script, "returnByValue": True}, session=session)
        if "exceptionDetails" in res:
            raise RuntimeError(f"script: {res['exceptionDetails']}")
        evaluated = str(res["result"].get("value"))
    shot = pipe.call("Page.captureScreenshot", {"format": "png"}, session=session, timeout=timeout)
    pipe.call("Runtime.evaluate", {"expression": "1"}, session=session)  # events so far are in
    out = PageLoad(url, load_seconds, found["text"], found["verdicts"], screenshot=base64.b64decode(shot["data"]))
    out.evaluated = evaluated
    for ev in pipe.events:
        method, params = ev["method"], ev.get("params", {})
        if method == "Network.requestWillBeSent":
            req_url = params.get("request", {}).get("url", "")
            if req_url != url:
                out.requests.append(req_url)
        elif method == "Network.loadingFailed":
            out.errors.append(f"load failed: {params.get('errorText')}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            out.errors.append(f"console.{params.get('type')}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            out.errors.append(f"log: {params['entry'].get('text')}")
    return out


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the rows (RGBA or RGB bytes, 8 bits) of a PNG: a small decoder (zlib and
    the five row filters) for checking a screenshot, no image library needed."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, b"", 0
    height = depth = color = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if depth != 8 or color not in (2, 6):
        raise ValueError(f"PNG depth {depth} color type {color}: only 8-bit RGB/RGBA is read here")
    bpp = 4 if color == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for r in range(height):
        f = raw[r * (stride + 1)]
        line = bytearray(raw[r * (stride + 1) + 1 : (r + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 255
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows
