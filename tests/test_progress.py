"""Progress in a log: one line per milestone instead of bar redraws, and an embedded Ray that
starts without telling the user to turn token authentication off."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tqdm.auto import tqdm

from cluster.sweep import AUTH_ENABLED_NOTICE
from iamt.progress import LOG_MILESTONES, LogLines, progress_bar
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
IAMT_RUN = [sys.executable, "-m", "cluster.cli", "run"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_five_percent_with_the_eta() -> None:
    log = io.StringIO()
    with progress_bar(total=1000, desc="sweep", unit="job", file=log) as bar:
        assert isinstance(bar, LogLines)
        for _ in range(1000):
            bar.set_postfix_str("failed=0")
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    # The first job, then each 5 % step up to 100 %; closing repeats nothing.
    assert len(lines) == LOG_MILESTONES + 1
    assert lines[-1].startswith("sweep: 100%") and "1000/1000" in lines[-1]
    assert all("<" in line and "failed=0" in line for line in lines)  # elapsed<ETA, postfix
    assert "  5% 50/1000" in lines[1]


def test_a_training_log_gets_one_line_per_epoch() -> None:
    epochs, steps = 4, 7
    log = io.StringIO()
    with progress_bar(
        total=epochs * steps, desc="train", unit="batch", milestones=epochs, file=log
    ) as bar:
        for _ in range(epochs * steps):
            bar.update(1)
    assert len(log.getvalue().splitlines()) == epochs + 1


def test_a_bar_without_a_total_waits_for_one_and_a_resumed_bar_counts_from_initial() -> None:
    log = io.StringIO()
    bar = LogLines(total=None, desc="train (Ray Train)", unit="batch", milestones=2, file=log)
    bar.update(5)
    assert log.getvalue() == ""  # no total yet: nothing to measure progress against
    bar.total = 10
    bar.update(5)
    bar.close()
    bar.close()
    assert len(log.getvalue().splitlines()) == 1  # the total reached; closing adds none
    assert "10/10" in log.getvalue()

    resumed = io.StringIO()
    with progress_bar(total=10, initial=6, desc="sweep", unit="job", file=resumed) as bar:
        bar.update(4)
    assert "10/10" in resumed.getvalue()


def test_a_terminal_gets_tqdm_and_quiet_prints_nothing() -> None:
    terminal = _Terminal()
    with progress_bar(total=3, desc="sweep", unit="job", file=terminal) as bar:
        assert isinstance(bar, tqdm)
        bar.update(3)
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    with progress_bar(total=3, desc="sweep", unit="job", disable=True, file=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def _fresh_home(tmp_path: Path) -> dict[str, str]:
    """An environment with its own HOME (its own ~/.ray/auth_token) and no auth mode set."""
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1"}


def test_plain_ray_init_prints_the_notice_our_embedded_start_drops(tmp_path: Path) -> None:
    """The control for the end-to-end test below: the notice is real, and Ray prints it."""
    script = "import ray; ray.init(address='local', num_cpus=1, include_dashboard=False)"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_fresh_home(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    assert AUTH_ENABLED_NOTICE in done.stderr


def _log_config(tmp_path: Path) -> Path:
    raw: dict[str, Any] = {
        **TINY,
        "train": {**TINY["train"], "epochs": 3},
        "robustness": {
            "shard_size": 8,
            "batch_size": 64,
            "drift_samples": 0,
            "noise": {"types": ["gaussian"], "strengths": [0.1], "n_samples": 64},
            "corruptions": {"names": ["pixelate"], "severities": [1], "n_samples": 64},
            "attacks": {"methods": [], "n_samples": 8},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.e2e
def test_iamt_run_in_a_log_prints_a_few_progress_lines_and_no_auth_notice(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [*IAMT_RUN, str(_log_config(tmp_path)), "--out", str(tmp_path / "run"), "--no-report"],
        env=_fresh_home(tmp_path),
        capture_output=True,  # stderr is a pipe, as under `ray job submit` or `| cat`
        text=True,
        timeout=420,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr
    assert AUTH_ENABLED_NOTICE not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    training = [line for line in lines if line.startswith("train")]
    sweep = [line for line in lines if line.startswith("sweep:")]
    assert 1 <= len(training) <= 3 + 1, training  # a line per epoch, and the first batch
    assert 1 <= len(sweep) <= LOG_MILESTONES + 1, sweep
    assert sweep[-1].startswith("sweep: 100%")
    # Token auth stays on: Ray generated the token of this fresh HOME's first local cluster.
    assert (tmp_path / "home" / ".ray" / "auth_token").is_file()
