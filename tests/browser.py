"""Opens a local HTML file in headless Chromium (Debian's `chromium`, driven by Playwright) and
reports what a person would see: every image's natural width, console messages, page errors,
dialogs (e.g. an injected `alert`) and the page's text."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a sandboxed root user on a machine without network (see the CI machine's notes).
FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def require_chromium() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (.ci/run does)")


def open_page(path: Path) -> dict[str, Any]:
    """Loads `path` (file://) and returns `images` [(src, naturalWidth)], `console`
    [(type, text)], `errors` [page errors], `dialogs` [messages], `text` (body text) and
    `scripts` (number of <script> elements)."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, list] = {"console": [], "errors": [], "dialogs": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(FLAGS))
        try:
            page = browser.new_page()
            page.on("console", lambda m: seen["console"].append((m.type, m.text)))
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
            page.goto(path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"
            )
            text = page.evaluate("document.body.innerText")
            scripts = page.evaluate("document.getElementsByTagName('script').length")
        finally:
            browser.close()
    return {**seen, "images": images, "text": text, "scripts": scripts}
