"""A real headless Chromium for the page tests: the Debian package driven by Playwright.

`make test` installs Chromium where it can (Makefile target `browser`); where no browser or no
Playwright is there, the `browser` fixture skips its tests and says which is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """$CHROMIUM, else the first Chromium on PATH; None when there is none."""
    named = os.environ.get("CHROMIUM")
    if named:
        return named if Path(named).exists() or shutil.which(named) else None
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class OpenedPage:
    """A page loaded from a file:// URL and every console error or uncaught exception it raised."""

    page: object  # playwright.sync_api.Page
    path: Path
    errors: list[str] = field(default_factory=list)

    def local_links(self) -> list[str]:
        """Every src and href of the document (and the viewer's file lists), as written."""
        return self.page.evaluate(
            """() => {
                const out = [];
                for (const e of document.querySelectorAll("[src], [href]"))
                    out.push(e.getAttribute("src") || e.getAttribute("href"));
                for (const e of document.querySelectorAll("[data-files]"))
                    out.push(...Object.values(JSON.parse(e.dataset.files)));
                return out;
            }"""
        )

    def missing_files(self) -> list[str]:
        """Links that do not resolve to an existing file beside the page."""
        missing = []
        for link in self.local_links():
            parsed = urlparse(link)
            if parsed.scheme not in ("", "file"):
                missing.append(f"{link} (not a local file)")
                continue
            target = Path(unquote(parsed.path)) if parsed.scheme else self.path.parent / unquote(parsed.path)
            if not target.is_file():
                missing.append(link)
        return missing


class Browser:
    """One Chromium for a test session; `open(path)` loads a page and collects its errors."""

    def __init__(self, executable: str) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])

    @contextmanager
    def open(self, path: Path, width: int = 1280, height: int = 900, on_page=None) -> Iterator[OpenedPage]:
        """Load `path`; `on_page(page)`, when given, runs before the navigation (e.g. to count requests)."""
        page = self._browser.new_page(viewport={"width": width, "height": height})
        if on_page is not None:
            on_page(page)
        opened = OpenedPage(page, Path(path))
        page.on("console", lambda m: m.type == "error" and opened.errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: opened.errors.append(f"exception: {e}"))
        page.on("requestfailed", lambda r: opened.errors.append(f"request failed: {r.url}"))
        page.goto(Path(path).resolve().as_uri())
        page.wait_for_load_state("load")
        try:
            yield opened
        finally:
            page.close()

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()


def start_browser() -> tuple[Browser | None, str]:
    """A started Browser, or None and why there is none."""
    executable = find_chromium()
    if executable is None:
        return None, "no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chrome)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return None, "Playwright is not installed (pip install -e '.[dev]')"
    return Browser(executable), ""
