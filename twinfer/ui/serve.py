"""``twinfer ui``: serve the dashboard with ``streamlit run`` on this machine.

It binds to 127.0.0.1 unless told otherwise (the dashboard has no authentication),
and turns off Streamlit's usage statistics and its browser auto-open for headless
use. On POSIX the process becomes the Streamlit server (``exec``), so whoever started
``twinfer ui`` stops the server by stopping that one process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_PORT = 8501
DEFAULT_HOST = "127.0.0.1"


def streamlit_command(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
                      headless: bool = True) -> list[str]:
    """The ``streamlit run`` command line that serves the app."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true" if headless else "false",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
            "--global.developmentMode", "false"]


def serve(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, headless: bool = True) -> int:
    """Run the dashboard until interrupted; returns streamlit's exit code."""
    if importlib.util.find_spec("streamlit") is None:
        print("twinfer ui needs the ui extra: pip install 'twinfer[ui]'", file=sys.stderr)
        return 2
    print(f"twinfer ui: http://{host}:{port}", file=sys.stderr, flush=True)
    command = streamlit_command(port, host, headless)
    if os.name == "posix":
        os.execv(command[0], command)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0
