"""Serving the dashboard and driving it in headless Chromium (browser tests and
``make_screenshots.py``).

The server is ``twinfer ui`` on a free local port, in its own process group so that
stopping it stops everything it started. The browser is Debian's ``chromium``
(``/usr/bin/chromium``, or ``$TWINFER_CHROMIUM``) driven by Playwright for Python;
no Playwright browser download is needed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = os.environ.get("TWINFER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def missing() -> str:
    """Why a browser test cannot run here ("" when it can)."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


@contextlib.contextmanager
def served(log_path: Path, timeout_s: float = 90.0) -> Iterator[str]:
    """``twinfer ui`` on a free port; yields its URL and always stops it."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "twinfer.cli", "ui", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(port):
            if proc.poll() is not None:
                raise RuntimeError(f"twinfer ui exited ({proc.returncode}):\n"
                                   + log_path.read_text())
            if time.monotonic() > deadline:
                raise RuntimeError("twinfer ui did not answer in time:\n" + log_path.read_text())
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)


@contextlib.contextmanager
def browser_page(width: int = 1440, height: int = 1000) -> Iterator[object]:
    """A Playwright page in headless Chromium; closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(90_000)
            yield page
        finally:
            browser.close()


def metric_text(page, label: str) -> str:
    """The value shown by the ``st.metric`` labelled ``label``."""
    metric = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def wait_idle(page, settle_s: float = 0.5) -> None:
    """Until Streamlit has finished the current run (no running-status widget)."""
    page.wait_for_selector('[data-testid="stMetricValue"], [data-testid="stAlert"], h1')
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not page.locator('[data-testid="stStatusWidget"]').is_visible():
            time.sleep(settle_s)
            if not page.locator('[data-testid="stStatusWidget"]').is_visible():
                return
        time.sleep(0.2)


def pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the ``st.selectbox`` labelled ``label``."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page, settle_s=1.5)


def exceptions(page) -> list[str]:
    return page.locator('[data-testid="stException"]').all_inner_texts()
