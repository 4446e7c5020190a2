"""`iamt run` submitted with `ray job submit` to a real local Ray head with token authentication.

The head is `ray start --head --block` in a child process, on 127.0.0.1, with its own HOME (so
its auth token never touches the real ~/.ray) and its own temp dir. It is stopped by terminating
that process, never with `ray stop`, which would also stop other Ray instances on the machine.

Measured with Ray 2.60: `ray start --head` turns token authentication on when a token exists
(~/.ray/auth_token, written by `ray get-auth-token --generate` or by any earlier local
`ray.init()`), or with RAY_AUTH_MODE=token; a fresh HOME without a token starts with
authentication *off* and only a warning. A client needs RAY_AUTH_MODE=token *and* the token
(the file, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH): the file alone, or RAY_AUTH_TOKEN alone,
is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.config import parse_config
from robustness.runner import evaluate_run
from tests.conftest import SMALL_SWEEP, TINY

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# What `--working-dir` must not upload (the venv alone is gigabytes).
EXCLUDES = [
    ".venv",
    "runs",
    ".git",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "__pycache__",
    "*.egg-info",
]
# Every family, one setting each: a few jobs, so the test stays well under two minutes.
SWEEP: dict[str, Any] = {
    **SMALL_SWEEP,
    "noise": {"types": ["gaussian"], "strengths": [0.1], "n_samples": 48},
    "corruptions": {"names": ["pixelate"], "severities": [3], "n_samples": 16},
    "attacks": {
        "linf_epsilons": [0.03],
        "l2_epsilons": [0.5],
        "n_samples": 16,
        "methods": [{"name": "fgsm"}],
    },
}
CONFIG = {**TINY, "robustness": SWEEP}
# Ray's Unix socket paths (<temp dir>/session_<date>_<pid>/sockets/plasma_store) must stay
# under 107 characters: the session part takes about 64 of them.
MAX_TEMP_DIR_LENGTH = 40
HEAD_START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 420


def _ray_cli() -> Path:
    ray = VENV_BIN / "ray"
    if not ray.is_file():
        found = shutil.which("ray")
        if found is None:
            pytest.fail(f"the `ray` command is missing (not in {VENV_BIN} nor on PATH)")
        ray = Path(found)
    return ray


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def _environment(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no RAY_* variable of the caller (RAY_ADDRESS, a token...) leaks in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(
        HOME=str(home),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keep every Ray process on 127.0.0.1
        **extra,
    )
    return env


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


@dataclass
class RayHead:
    ray: Path
    address: str  # the job server (dashboard), http://127.0.0.1:<port>
    home: Path  # holds .ray/auth_token
    log: Path

    def client_env(self, **extra: str) -> dict[str, str]:
        """What a client with the token needs: the token file in HOME and RAY_AUTH_MODE=token."""
        return _environment(self.home, RAY_AUTH_MODE="token", **extra)

    def cli(
        self, *args: str, env: dict[str, str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.ray), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def job_list(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return self.cli("job", "list", "--address", self.address, env=env)


def _http_status(url: str) -> int | None:
    """The HTTP status a GET gets, or None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the `--block` head (it drains, then stops its processes); SIGKILL the whole
    process group (its own session) only if it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # anything of the head's left?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    ray = _ray_cli()
    root = tmp_path_factory.mktemp("ray_head")
    home = root / "home"
    home.mkdir()
    # The token the head and its clients share; Ray writes it to $HOME/.ray/auth_token.
    generated = subprocess.run(
        [str(ray), "get-auth-token", "--generate"],
        env=_environment(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert generated.returncode == 0, generated.stderr
    assert (home / ".ray" / "auth_token").is_file()

    temp_dir = tmp_path_factory.mktemp("ray")
    own_temp_dir = None
    if len(str(temp_dir)) > MAX_TEMP_DIR_LENGTH:
        temp_dir = own_temp_dir = Path(tempfile.mkdtemp(prefix="ray"))
    gcs_port, dashboard_port, client_port, agent_port = _free_ports(4)
    command = [
        str(ray),
        "start",
        "--head",
        "--block",
        "--port",
        str(gcs_port),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard_port),
        # Ray's fixed defaults (10001, 52365) would clash with another Ray on this machine.
        "--ray-client-server-port",
        str(client_port),
        "--dashboard-agent-listen-port",
        str(agent_port),
        "--num-cpus",
        "2",
        "--disable-usage-stats",
        "--temp-dir",
        str(temp_dir),
    ]
    log = root / "head.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            env=_environment(home),  # no RAY_AUTH_MODE: the token file alone turns auth on
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for the last-resort SIGKILL
        )
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        status = None
        while status is None:
            if process.poll() is not None:
                pytest.fail(f"`ray start --head` exited ({process.returncode}):\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray job server did not answer in time:\n{_tail(log)}")
            time.sleep(0.25)
            status = _http_status(f"{address}/api/version")
        # Token authentication is on: even the version endpoint wants the token.
        assert status == 401, f"{address}/api/version answered {status}, not 401"
        yield RayHead(ray=ray, address=address, home=home, log=log)
    finally:
        _stop(process)
        if own_temp_dir is not None:
            shutil.rmtree(own_temp_dir, ignore_errors=True)


@pytest.mark.timeout(120)
def test_a_client_without_the_token_is_refused(ray_head: RayHead, tmp_path: Path) -> None:
    bare_home = tmp_path / "home"
    bare_home.mkdir()
    refused = ray_head.job_list(_environment(bare_home))
    assert refused.returncode != 0
    assert "Unauthorized: Missing authentication token" in refused.stderr, refused.stderr
    # The token file alone is not enough either: the client must also set RAY_AUTH_MODE=token.
    file_only = ray_head.job_list(_environment(ray_head.home))
    assert file_only.returncode != 0
    assert "Unauthorized: Missing authentication token" in file_only.stderr, file_only.stderr
    wrong = ray_head.job_list(
        _environment(bare_home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token")
    )
    assert wrong.returncode != 0
    assert "Forbidden: Invalid authentication token" in wrong.stderr, wrong.stderr
    allowed = ray_head.job_list(ray_head.client_env())
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.timeout(600)
def test_iamt_run_as_a_ray_job_matches_iamt_evaluate(
    ray_head: RayHead, tiny_run_dir: Path, tmp_path: Path
) -> None:
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    # Absolute: the job runs in a temporary copy of the working dir, not in the repo.
    run_dir = tmp_path / "shared" / "tiny"
    submission_id = f"iamt-test-{uuid.uuid4().hex[:12]}"
    env = ray_head.client_env()
    submitted = ray_head.cli(
        "job",
        "submit",
        "--address",
        ray_head.address,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(REPO_ROOT),
        "--runtime-env-json",
        json.dumps({"excludes": EXCLUDES}),
        "--",
        "iamt",
        "run",
        str(config_path),
        "--out",
        str(run_dir),
        "--checkpoint",
        str(tiny_run_dir / "checkpoints" / "normal"),
        "--quiet",
        env=env,
        timeout=JOB_TIMEOUT_S,
    )
    report = f"stdout:\n{submitted.stdout[-6000:]}\nstderr:\n{submitted.stderr[-3000:]}"
    assert submitted.returncode == 0, report
    status = ray_head.cli("job", "status", "--address", ray_head.address, submission_id, env=env)
    assert status.returncode == 0, status.stderr
    # `ray job status` says "Job '<id>' succeeded" (SUCCEEDED in `ray job list`).
    assert f"Job '{submission_id}' succeeded" in status.stdout, status.stdout + status.stderr

    for name in ["results.csv", "summary.csv", "manifest.json"]:
        assert (run_dir / name).is_file(), f"{name} missing; {report}"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done", manifest
    assert manifest["jobs"]["failed"] == 0 and manifest["jobs"]["done"] > 0, manifest
    assert manifest["ray"].startswith("cluster at"), manifest  # it joined the head

    # The same config and checkpoint through `iamt evaluate`, in this process.
    reference = tmp_path / "reference" / "tiny"
    shutil.copytree(tiny_run_dir, reference)
    counts = evaluate_run(reference, parse_config(CONFIG), show_progress=False)
    assert counts["failed"] == 0 and counts["done"] == manifest["jobs"]["done"], counts
    for name in ["results.csv", "summary.csv"]:
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
