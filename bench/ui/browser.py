"""Headless Debian Chromium driven by Playwright (the pip package; no browser download): open a page, wait
until it has rendered, act, capture.

    with Browser(size=(1600, 1000)) as browser:
        browser.open("http://127.0.0.1:3000/assets/student")
        browser.wait_for("document.body.innerText.includes('content_hash')")
        browser.screenshot(Path("student.png"))

Playwright talks to `/usr/bin/chromium` (apt-get install -y chromium; `make chromium`) through
`executable_path`, with the flags below, which work in containers without a sandbox or a GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]


def chromium_path() -> str:
    path = os.environ.get("SLMREC_CHROMIUM") or (CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"))
    if not path:
        raise FileNotFoundError(f"Debian's chromium is not installed ({CHROMIUM}): apt-get install -y chromium "
                                "(or `make chromium`)")
    return path


class Browser:
    def __init__(self, size: tuple[int, int] = (1600, 1000)):
        self.size = size

    def __enter__(self) -> "Browser":
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=chromium_path(), args=FLAGS, headless=True)
            self.page = self._browser.new_page(viewport={"width": self.size[0], "height": self.size[1]})
        except BaseException:
            self._pw.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._browser.close()
        finally:
            self._pw.stop()

    def set_height(self, height: int) -> None:
        self.page.set_viewport_size({"width": self.size[0], "height": height})

    def evaluate(self, expression: str):
        return self.page.evaluate(expression)

    def open(self, url: str) -> None:
        self.page.goto(url, wait_until="domcontentloaded")

    def text(self) -> str:
        return self.page.inner_text("body")

    def wait_for(self, condition_js: str, timeout_s: float = 60.0, settle_s: float = 1.5) -> None:
        """Until the JS expression is truthy, then `settle_s` more (animations, late layout)."""
        check = f"() => {{ try {{ return Boolean({condition_js}); }} catch (e) {{ return false; }} }}"
        try:
            self.page.wait_for_function(check, timeout=timeout_s * 1000, polling=500)
        except PlaywrightTimeout as err:  # say what the page shows instead
            text = self.evaluate("document.body ? document.body.innerText.slice(0, 500) : ''")
            raise TimeoutError(f"page never satisfied {condition_js!r} in {timeout_s:.0f}s; it shows: {text!r}") from err
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

    def scroll_to(self, text: str) -> None:
        """Scroll the first element showing `text` to the top of the viewport."""
        self.page.get_by_text(text).first.evaluate("e => e.scrollIntoView({block: 'start'})")

    def mouse_click(self, x: float, y: float, button: str = "left") -> None:
        """A real click at viewport coordinates (React context menus listen to these, not to el.click())."""
        self.page.mouse.click(x, y, button=button)

    def click_icon(self, icon: str) -> None:
        """Click the button holding the icon labelled `icon` (Dagster's icons carry aria-label=<icon name>)."""
        clicked = self.evaluate(
            f"(() => {{ const i = document.querySelector('button [aria-label={json.dumps(icon)}]');"
            " if (i) i.closest('button').click(); return !!i; })()"
        )
        if not clicked:
            raise LookupError(f"no button with icon {icon!r} on the page")

    def screenshot(self, out: Path, full_page: bool = False) -> None:
        """PNG of the viewport (or the whole page), written atomically."""
        tmp = out.with_suffix(".png.tmp")
        self.page.screenshot(path=str(tmp), full_page=full_page, type="png")
        os.replace(tmp, out)
