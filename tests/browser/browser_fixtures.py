"""The console in a real browser: the distribution's headless chromium
driven by Playwright for Python, against a real serve (uvicorn on
127.0.0.1 with the scheduler) over the real chDB and redis-server.

Without chromium the tests are skipped, except in CI (``CI=true``), where a
missing browser fails them: ``.ci/run`` installs it.  Screenshots of every
page go to a temporary folder (printed at the end of the session); with
``GPUBACKFILL_DOCS_SCREENSHOTS=1`` the ones in docs/ (``DOCS_SHOTS``) are renewed too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from loopback import Uvicorn

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCS_SHOTS = {"console", "console-job", "console-chart"}   # the ones docs/ and the README show


def _no_browser(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: the browser tests must run in CI (.ci/run installs chromium with apt-get)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        _no_browser("no chromium on PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (the test extra)")
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        browser = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    """Where screenshots go; ``save(page, name)`` also renews docs/NAME.png
    when GPUBACKFILL_DOCS_SCREENSHOTS=1."""
    folder = tmp_path_factory.mktemp("screenshots")

    def save(page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=False)
        if os.environ.get("GPUBACKFILL_DOCS_SCREENSHOTS") == "1" and name in DOCS_SHOTS:
            shutil.copyfile(path, DOCS / f"{name}.png")
        return path

    yield save
    print(f"\nconsole screenshots: {folder}")


class Serve(Uvicorn):
    """The API and the console (create_app with a Scheduler) on a free
    loopback port, served by uvicorn from a thread, as ``gpubackfill serve``
    runs them."""

    def __init__(self, service):
        from gpubackfill.serve.api import create_app
        from gpubackfill.serve.scheduler import Scheduler

        self.scheduler = Scheduler(service, max_jobs=1, interval=0.1)
        super().__init__(create_app(service, self.scheduler))

    def stop(self) -> None:
        super().stop()
        self.scheduler.shutdown()
