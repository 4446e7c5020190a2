"""Shared fixtures: a tiny config and a tiny trained run, built once per session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cluster.config import RunConfig, parse_config
from robustness.runner import TrainRunSummary, train_run

# One torch thread. Measured on this 2-core machine while another process kept one core busy:
# with 2 threads a forward + backward of a tiny model took 0.6 s instead of 4 ms (OpenMP
# threads spin-waiting on each other); with 1 thread the suite runs at the same speed busy or
# not. Tests that train for real ask for more threads in their config.
torch.set_num_threads(1)

TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {"name": "shapes", "n_train": 256, "n_val": 64, "n_test": 128},
    "model": {"widths": [8, 16], "attention_hidden": 8, "head_channels": 8},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
    "importance": {"n_samples": 64},
    "emphasis": {"variants": {"emphasized": "topk:k=4,alpha=2"}},
}


# A robustness sweep small enough for tests: every family, two strengths each.
SMALL_SWEEP: dict[str, Any] = {
    "shard_size": 48,
    "batch_size": 64,
    "noise": {"types": ["gaussian", "impulse"], "strengths": [0.05, 0.2], "n_samples": 64},
    "corruptions": {"names": ["fog", "pixelate"], "severities": [1, 5], "n_samples": 32},
    "attacks": {
        "linf_epsilons": [0.01, 0.05],
        "l2_epsilons": [0.5, 2.0],
        "n_samples": 16,
        "methods": [
            {"name": "fgsm"},
            {"name": "linf_pgd", "params": {"steps": 3}},
            {"name": "l2_deepfool", "params": {"steps": 5}, "n_samples": 8},
            {"name": "boundary", "params": {"steps": 10}, "n_samples": 4},
        ],
    },
}


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """`train_run` with `train.num_threads` sets torch's threads for the whole process; put
    them back, so that no test's floats depend on which tests ran before it (pytest-xdist
    deals tests out to workers in its own order)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config() -> RunConfig:
    return parse_config(TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TrainRunSummary:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    return train_run(parse_config(TINY), run_dir, show_progress=False)


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_run: TrainRunSummary) -> Path:
    return tiny_run.run_dir


@pytest.fixture(scope="session")
def evaluated_run_dir(tiny_run: TrainRunSummary, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory after `iamt train` and `iamt evaluate` (SMALL_SWEEP), read-only:
    copy it before writing to it."""
    from robustness.runner import evaluate_run

    run_dir = tmp_path_factory.mktemp("evaluated") / "tiny"
    shutil.copytree(tiny_run.run_dir, run_dir)
    evaluate_run(run_dir, parse_config({**TINY, "robustness": SMALL_SWEEP}), show_progress=False)
    return run_dir


def start_cli(argv: list[str]) -> subprocess.Popen[bytes]:
    """`iamt ARGV` as a separate driver process that Ctrl-C (SIGINT) interrupts, stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", *argv],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # pytest-xdist workers ignore SIGINT, and an ignored signal is inherited: give the
        # driver the default disposition, so that Python turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
