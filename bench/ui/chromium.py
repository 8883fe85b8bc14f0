"""Headless Chromium driven over the DevTools protocol: open a page, wait until it has rendered, act, capture.

    with Chromium(size=(1600, 1000)) as browser:
        browser.open("http://127.0.0.1:3000/assets/student")
        browser.wait_for("document.body.innerText.includes('content_hash')")
        browser.screenshot(Path("student.png"))

Plain `chromium --screenshot URL` cannot wait for a JS app's data or click anything; this can. Needs Debian's
`chromium` and the `websockets` package (pinned in requirements.lock).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import socket
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    def __init__(self, size: tuple[int, int] = (1600, 1000), binary: str | None = None):
        self.binary = binary or shutil.which("chromium") or shutil.which("chromium-browser")
        if self.binary is None:
            raise FileNotFoundError("chromium not found: apt-get install -y chromium (Debian)")
        self.size = size
        self._ids = itertools.count(1)

    def __enter__(self) -> "Chromium":
        self._profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        port = free_port()
        cmd = [self.binary, *FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={self._profile}",
               f"--window-size={self.size[0]},{self.size[1]}", "about:blank"]
        # own process group: the browser's helper processes (renderer, GPU, zygote) are stopped with it
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.ws = None
        try:
            page = self._page_target(port, timeout_s=30.0)
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 << 20)
            self.call("Page.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      width=self.size[0], height=self.size[1], deviceScaleFactor=1, mobile=False)
        except BaseException:
            self._close()
            raise
        return self

    def _page_target(self, port: int, timeout_s: float) -> dict:
        """The DevTools description of the open tab, once Chromium answers on `port`."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode} before opening DevTools")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if pages:
                    return pages[0]
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium DevTools on port {port} did not answer in {timeout_s:.0f}s")
            time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except ProcessLookupError:  # the whole group is gone already
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for attempt in range(10):  # helpers may still be flushing the profile for a moment
            try:
                shutil.rmtree(self._profile)
                break
            except OSError:
                if attempt == 9:
                    raise
                time.sleep(0.5)

    def call(self, method: str, **params) -> dict:
        """One DevTools command; its result (events arriving meanwhile are skipped)."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error in {expression[:80]!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, condition_js: str, timeout_s: float = 60.0, settle_s: float = 1.5) -> None:
        """Until the JS expression is truthy, then `settle_s` more (animations, late layout)."""
        deadline = time.monotonic() + timeout_s
        # false while the expression throws (document.body does not exist yet right after a navigation)
        check = f"(() => {{ try {{ return Boolean({condition_js}); }} catch (e) {{ return false; }} }})()"
        while not self.evaluate(check):
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 500) : ''")
                raise TimeoutError(f"page never satisfied {condition_js!r} in {timeout_s:.0f}s; it shows: {text!r}")
            time.sleep(0.5)
        time.sleep(settle_s)

    def click_text(self, text: str, selector: str = "button, a, [role=menuitem], [role=tab]") -> None:
        """Click the first innermost element matching `selector` whose visible text starts with the line
        `text` (menu items carry their keyboard shortcut on a second line)."""
        clicked = self.evaluate(
            f"(() => {{ const m = [...document.querySelectorAll({json.dumps(selector)})]"
            f".filter(e => e.innerText.trim().split('\\n')[0].trim() === {json.dumps(text)});"
            " const el = m.find(e => !m.some(o => o !== e && e.contains(o)));"
            " if (el) el.click(); return !!el; })()"
        )
        if not clicked:
            raise LookupError(f"no {selector} with text {text!r} on the page")

    def mouse_click(self, x: float, y: float, button: str = "left") -> None:
        """A real click at viewport coordinates (React context menus listen to these, not to el.click())."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, clickCount=1)

    def click_icon(self, icon: str) -> None:
        """Click the button holding the icon labelled `icon` (Dagster's icons carry aria-label=<icon name>)."""
        clicked = self.evaluate(
            f"(() => {{ const i = document.querySelector('button [aria-label={json.dumps(icon)}]');"
            " if (i) i.closest('button').click(); return !!i; })()"
        )
        if not clicked:
            raise LookupError(f"no button with icon {icon!r} on the page")

    def screenshot(self, out: Path) -> None:
        """PNG of the viewport, written atomically."""
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        tmp = out.with_suffix(".png.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
