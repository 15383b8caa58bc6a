"""Shared fixtures. Tests never touch the network or the user's cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Converted weights are cached per test session, never in ~/.cache."""
    cache = os.environ.get("EDGEXFER_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "edgexfer-cache")
    monkeypatch.setenv("EDGEXFER_CACHE", cache)


# Chromium's own switches for a quiet, sandbox-free run in CI containers.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def render_in_chromium():
    """``render(html_path, screenshot=None)`` opens a page in headless Chromium at 1280×800 and
    returns ``{"images": [loaded?…], "console_errors", "requests" (other than the page and
    data: URLs), "summary_box": (top, bottom) of #summary}``. Skips, saying why, where Chromium
    or playwright (which drives the installed browser; no browser download) is missing."""
    import shutil

    executable = next(
        (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
    )
    if executable is None:
        pytest.skip("headless Chromium is not installed (Debian/Ubuntu: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; it drives the installed Chromium)")

    def render(path, screenshot=None) -> dict:
        url = path.resolve().as_uri()
        errors, requests = [], []
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on(
                    "request",
                    lambda request: (
                        requests.append(request.url)
                        if request.url != url and not request.url.startswith("data:")
                        else None
                    ),
                )
                page.goto(url, wait_until="load")
                box = page.evaluate(
                    "(() => { const r = document.querySelector('#summary').getBoundingClientRect();"
                    " return [r.top, r.bottom]; })()"
                )
                if screenshot:
                    page.screenshot(path=str(screenshot))
                images = page.evaluate("""async () => {
                    document.querySelectorAll('details').forEach(d => { d.open = true; });
                    const images = Array.from(document.images);
                    await Promise.all(images.map(i => i.decode().catch(() => null)));
                    return images.map(i => i.complete && i.naturalWidth > 0);
                }""")
            finally:
                browser.close()
        return {"images": images, "console_errors": errors, "requests": requests, "summary_box": tuple(box)}

    return render
