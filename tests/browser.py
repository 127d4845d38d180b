"""Headless Chromium (Debian ``chromium``) driven by PyPI ``playwright``, with the network blocked.

No ``playwright install``: the system Chromium is launched through
``executable_path`` with the flags of DESIGN §3 and a fresh user-data dir.
Every request that is not ``file:``, ``data:`` or ``blob:`` is aborted and
recorded; CSP violations, console errors and page errors are recorded too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def chromium_path() -> str | None:
    env = os.environ.get("SINK_INTERP_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def why_no_browser() -> str | None:
    """None if a browser test can run, else the reason (used as the skip message)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "PyPI playwright is not installed (fix: pip install playwright; no 'playwright install' needed)"
    if chromium_path() is None:
        return "Chromium is not installed (fix: apt-get install -y chromium, or set SINK_INTERP_CHROMIUM=/path/to/chromium)"
    return None


@dataclass
class Opened:
    page: Any
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    seconds_to_readable: float | None = None  # load + every widget inside the first viewport drawn
    seconds_to_all_drawn: float | None = None  # ... + every widget on the page drawn (window.siDrawAll)

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("window.__siViolations || []"))


CSP_SPY = """
window.__siViolations = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__siViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""

# a CircuitsVis widget is drawn when its mount holds rendered elements and every canvas in it has been
# laid out (chart.js first creates its canvases at 1000 x 1000 px, then sizes them to the container)
_DRAWN = """
(el) => { const m = el.querySelector('.si-cv-mount');
  if (!m || m.children.length === 0) return false;
  const cs = Array.from(m.querySelectorAll('canvas'));
  if (cs.length) return cs.every(c => c.clientWidth > 0 && c.clientHeight > 0 && c.clientWidth <= m.clientWidth + 1);
  return m.querySelector('button, span') !== null; }
"""
ALL_DRAWN_JS = f"""
() => {{ if (document.querySelector('.si-error')) return 'error';
  const drawn = {_DRAWN};
  return Array.from(document.querySelectorAll('div.si-cv')).every(drawn); }}
"""
VISIBLE_DRAWN_JS = f"""
() => {{ if (document.querySelector('.si-error')) return 'error';
  const drawn = {_DRAWN};
  return Array.from(document.querySelectorAll('div.si-cv')).filter(el => {{
    const r = el.getBoundingClientRect(); return r.bottom > 0 && r.top < window.innerHeight; }}).every(drawn); }}
"""


@contextmanager
def browser(viewport: tuple[int, int] = (1280, 900)) -> Iterator[Any]:
    """A persistent Chromium context with a fresh user-data dir, closed and removed afterwards."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    assert exe is not None, why_no_browser()
    user_dir = tempfile.mkdtemp(prefix="si-chromium-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                user_dir,
                executable_path=exe,
                headless=True,
                args=FLAGS,
                viewport={"width": viewport[0], "height": viewport[1]},
            )
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(user_dir, ignore_errors=True)


def screenshot(opened: Opened, path: str | Path, width: int = 1280, settle_ms: int = 600) -> Path:
    """Full-page screenshot without Playwright's full_page mode.

    ``full_page=True`` resizes the viewport during the capture; chart.js (inside CircuitsVis)
    reacts to that resize and can be caught half-way (collapsed charts). So the viewport is set
    to the page height first, the charts settle, and the viewport is captured as is.
    """
    page = opened.page
    for _ in range(3):
        h = int(page.evaluate("document.documentElement.scrollHeight"))
        page.set_viewport_size({"width": width, "height": min(h, 16000)})
        page.wait_for_timeout(settle_ms)
        page.wait_for_function(ALL_DRAWN_JS, timeout=30000)
        if int(page.evaluate("document.documentElement.scrollHeight")) == h:
            break
    page.screenshot(path=str(path), full_page=False)
    return Path(path)


def open_offline(ctx: Any, path: str | Path, wait: str = "all", timeout_ms: int = 30000) -> Opened:
    """Open a local HTML file with every non-local request aborted and recorded.

    ``wait``: ``"none"``; ``"visible"``: until the widgets in the first viewport are drawn;
    ``"all"``: then also draw every widget (``window.siDrawAll()``) and wait for them.
    """
    page = ctx.new_page()
    opened = Opened(page)

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(LOCAL_SCHEMES):
            r.continue_()
        else:
            opened.blocked.append(url)
            r.abort()

    page.route("**/*", route)
    page.on(
        "request",
        lambda req: None if req.url.startswith(LOCAL_SCHEMES) or req.url in opened.blocked else opened.blocked.append(req.url),
    )
    page.on("console", lambda m: opened.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: opened.page_errors.append(str(e)))
    page.add_init_script(CSP_SPY)
    t0 = time.perf_counter()
    page.goto(Path(path).resolve().as_uri(), wait_until="load")
    if wait in ("visible", "all"):
        page.wait_for_function(VISIBLE_DRAWN_JS, timeout=timeout_ms)
        opened.seconds_to_readable = time.perf_counter() - t0
        assert page.evaluate(VISIBLE_DRAWN_JS) is True, "a CircuitsVis widget reported an error"
    if wait == "all":
        page.evaluate("window.siDrawAll && window.siDrawAll()")
        page.wait_for_function(ALL_DRAWN_JS, timeout=timeout_ms)
        opened.seconds_to_all_drawn = time.perf_counter() - t0
        assert page.evaluate(ALL_DRAWN_JS) is True, "a CircuitsVis widget reported an error"
    return opened
