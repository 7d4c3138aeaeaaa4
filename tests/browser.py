"""Open a self-contained HTML page in a real headless Chromium and measure what a reader would see.

Playwright drives the Chromium already installed on the machine (`executable_path`; it downloads nothing). CI
(`.ci/run`) installs Debian's `chromium-headless-shell` and sets CXR_REQUIRE_BROWSER=1, so there a missing browser or
a missing `playwright` package fails the tests; elsewhere they skip, saying why.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")
# Measured in the page once it has loaded: headings (and those followed at once by a heading of the same or a higher
# level: a section with nothing in it), `.err` notes, images (decoded or not; shown vs natural width),
# elements past the right edge, the document's scroll width, the body's font size.
PROBE = """() => {
  const vw = window.innerWidth;
  const imgs = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
      natural_w: i.naturalWidth, w: i.getBoundingClientRect().width}));
  const wide = [...document.body.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > vw + 1)
      .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')).slice(0, 10);
  const all = [...document.body.querySelectorAll('*')].filter(e => e.tagName !== 'SECTION');
  const level = e => /^H[1-6]$/.test(e.tagName) ? +e.tagName[1] : 0;
  const empty = all.filter((e, i) => level(e) && i + 1 < all.length && level(all[i + 1]) && level(all[i + 1]) <= level(e))
      .map(e => e.textContent.trim());
  return {h1: [...document.querySelectorAll('h1')].map(h => h.textContent.trim()),
          h2: [...document.querySelectorAll('h2')].map(h => h.textContent.trim()),
          h3: [...document.querySelectorAll('h3')].map(h => h.textContent.trim()), empty_headings: empty,
          errors: [...document.querySelectorAll('.err')].map(e => e.textContent.trim()),
          images: imgs, wide: wide, viewport: vw, scroll_width: document.scrollingElement.scrollWidth,
          font_px: parseFloat(getComputedStyle(document.body).fontSize), text_len: document.body.innerText.length};
}"""


def find_browser() -> str | None:
    """CXR_BROWSER (a path or a command name), else the first Chromium on PATH."""
    if os.environ.get("CXR_BROWSER"):
        return shutil.which(os.environ["CXR_BROWSER"])
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def need(reason: str) -> None:
    """Fail under CXR_REQUIRE_BROWSER=1 (CI installed a browser, so its absence is a bug), skip otherwise."""
    if os.environ.get("CXR_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CXR_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Rendered:
    """What one page looked like at one viewport width."""

    url: str
    width: int
    dom: dict
    shot: Path
    console_errors: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)

    def shot_spread(self) -> float:
        """Standard deviation of the screenshot's grey levels: ~0 for a blank (single-colour) page."""
        from PIL import Image

        with Image.open(self.shot) as im:
            return float(np.asarray(im.convert("L"), dtype=np.float32).std())

    def ink(self) -> float:
        """Fraction of the screenshot's pixels that are not near-white."""
        from PIL import Image

        with Image.open(self.shot) as im:
            return float((np.asarray(im.convert("L")) < 200).mean())


class Browser:
    """One headless Chromium for a test session; `render` opens a page in a fresh context (no shared state)."""

    def __init__(self, executable: str):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Exception:
            self._pw.stop()
            raise
        self.version = self._browser.version

    def render(self, page_file: Path, width: int, shot: Path, height: int = 900) -> Rendered:
        """Load `page_file` at `width` px with every non-local request blocked and recorded; screenshot the whole
        page to `shot`."""
        ctx = self._browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        ctx.route(lambda url: not url.startswith(LOCAL_SCHEMES), lambda route: route.abort())
        try:
            page = ctx.new_page()
            out = Rendered(page_file.resolve().as_uri(), width, {}, shot)
            page.on("console", lambda m: out.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out.console_errors.append(f"uncaught: {e}"))
            page.on("request", lambda r: None if r.url.startswith(LOCAL_SCHEMES) else out.remote_requests.append(r.url))
            page.goto(out.url, wait_until="load", timeout=30_000)
            page.wait_for_function("[...document.images].every(i => i.complete)", timeout=10_000)
            out.dom = page.evaluate(PROBE)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            return out
        finally:
            ctx.close()

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


def open_browser() -> Browser:
    """The session's browser, or a skip (a failure under CXR_REQUIRE_BROWSER=1) saying what is missing."""
    exe = find_browser()
    if exe is None:
        need(f"no browser: CXR_BROWSER={os.environ.get('CXR_BROWSER', '')!r} and none of {', '.join(BROWSERS)} on "
             "PATH (apt-get install chromium-headless-shell)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        need("the playwright package is not installed (pip install -e '.[dev]')")
    return Browser(exe)
