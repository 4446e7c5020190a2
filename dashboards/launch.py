"""Start the Streamlit dashboard (`iamt dashboard`) as a child process.

The app (`dashboards/app.py`) reads the runs directory from the `IAMT_RUNS_DIR` environment
variable. The server binds to 127.0.0.1 unless the caller asks for another address.
No torch or Ray here: the dashboard only reads CSV and JSON files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

from dashboards.rundata import RunDataError

APP_PATH = Path(__file__).resolve().parent / "app.py"
RUNS_ENV = "IAMT_RUNS_DIR"
DEFAULT_HOST = "127.0.0.1"


def streamlit_command(port: int, host: str = DEFAULT_HOST, app: Path = APP_PATH) -> list[str]:
    """The `streamlit run` command line that serves `app` on `host:port`, headless, with the
    toolbar in viewer mode: no Deploy, Rerun or Clear-cache buttons for whoever reads it."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def dashboard_environment(runs: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default: this process's environment) with `IAMT_RUNS_DIR` set."""
    env = dict(os.environ if base is None else base)
    env[RUNS_ENV] = str(runs.resolve())
    return env


def run_dashboard(runs: Path, *, port: int, host: str = DEFAULT_HOST) -> int:
    """Serve the dashboard over the run directories under `runs` until interrupted.

    Returns the server's exit code. Raises `RunDataError` when `runs` is not a directory or
    the port is out of range, before the server starts.
    """
    runs = Path(runs)
    if not runs.is_dir():
        what = "is not a directory" if runs.exists() else "does not exist"
        raise RunDataError(
            f"runs directory {str(runs)!r} {what} "
            "(pass --runs DIR, a folder holding run directories written by `iamt train`)"
        )
    if not 0 < port < 65536:
        raise RunDataError(f"port {port} is not in 1..65535")
    if not APP_PATH.is_file():
        raise RunDataError(f"the app {APP_PATH} is missing")
    command = streamlit_command(port, host, APP_PATH)
    env = dashboard_environment(runs)
    print(f"serving runs in {env[RUNS_ENV]} at http://{host}:{port}", file=sys.stderr)
    server = subprocess.Popen(command, env=env)

    # Stopping `iamt dashboard` stops the server too: pass SIGTERM on to it (Ctrl-C reaches it
    # directly, through the terminal's process group).
    def forward(signum: int, frame: FrameType | None) -> None:
        server.send_signal(signum)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if in_main_thread else None
    try:
        try:
            return server.wait()
        except KeyboardInterrupt:
            # The server got the same SIGINT and shuts down; give it a moment to do so.
            try:
                return server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if server.poll() is None:
            server.kill()
            server.wait()
