"""Shared fixtures: a tiny config and a tiny trained run, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iamt.config import RunConfig, parse_config
from iamt.workflow import TrainRunSummary, train_run

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
