"""Training on Ray Train (real TorchTrainer, embedded local Ray with 2 CPUs): one worker gives
the single-process trainer's weights bit for bit, two DDP workers reach the same accuracy band,
trainers run concurrently, and a rerun resumes from Ray Train's checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from cluster.config import RunConfig, parse_config
from cluster.sweep import init_local_ray
from cluster.train import FitRequest, fit_many_on_ray, fit_on_ray
from iamt.checkpoint import load_checkpoint
from iamt.data import Split, load_split
from iamt.model import Architecture, AttentionNet, build_model
from iamt.rundir import RunDirectory
from iamt.train import channel_statistics, seed_everything
from robustness.runner import TrainRunSummary, train_run
from tests.conftest import TINY

# Enough data and epochs to learn the shapes attributes (single process, 1 thread: ~10 s).
BAND: dict[str, Any] = {
    **TINY,
    "name": "band",
    "data": {**TINY["data"], "n_train": 2048, "n_test": 512},
    "train": {**TINY["train"], "epochs": 8, "batch_size": 64, "lr": 0.01},
}


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    init_local_ray(num_cpus=2)
    yield
    ray.shutdown()


def _with_workers(raw: dict[str, Any], workers: int, **changes: Any) -> RunConfig:
    return parse_config({**raw, **changes, "cluster": {"train": {"num_workers": workers}}})


def _initial_model(config: RunConfig) -> AttentionNet:
    """The untrained model exactly as `train_run` draws it."""
    train_set = load_split(config.data, Split.TRAIN, config.seed)
    mean, std = channel_statistics(train_set)
    architecture = Architecture.from_config(
        config.model, train_set.attributes, config.data.image_size, mean, std
    )
    seed_everything(config.seed)
    return build_model(architecture)


def _weights(run_dir: Path) -> bytes:
    return RunDirectory(run_dir).checkpoint_stem.with_suffix(".safetensors").read_bytes()


def test_one_worker_trains_the_single_process_weights_bit_for_bit_concurrently(
    tmp_path: Path,
) -> None:
    seeds = [3, 4]
    configs = [_with_workers(TINY, 1, seed=seed) for seed in seeds]
    # The worker trains with one thread (cpus_per_worker=1); so must the reference, whatever
    # an earlier test in this process set (float reductions depend on the thread count).
    torch.set_num_threads(1)
    single = [
        train_run(config, tmp_path / f"single-{config.seed}", show_progress=False)
        for config in configs
    ]
    # Both trainers at once, each its own TorchTrainer launched from its own Ray task.
    requests = [
        FitRequest(_initial_model(config), config, tmp_path / f"ray-{config.seed}")
        for config in configs
    ]
    histories = fit_many_on_ray(requests, show_progress=False)
    for request, history, reference in zip(requests, histories, single, strict=True):
        expected, _ = load_checkpoint(RunDirectory(reference.run_dir).checkpoint_stem)
        trained = request.model.state_dict()
        for name, tensor in expected.state_dict().items():
            assert trained[name].equal(tensor), name
        assert [record.epoch for record in history] == [1]
        assert history[0].seconds > 0
        assert (RunDirectory(request.run_dir).train_storage / "train").is_dir()  # Ray Train's
    first, second = (request.model.state_dict() for request in requests)
    assert any(not first[name].equal(second[name]) for name in first), "two seeds, one model"


def test_two_ddp_workers_reach_the_single_process_accuracy_band(
    tmp_path: Path, tiny_run: TrainRunSummary
) -> None:
    del tiny_run  # only to build the session fixture outside this module's timing
    config = _with_workers(BAND, 2)
    single = train_run(config, tmp_path / "single", show_progress=False)
    distributed = train_run(
        config,
        tmp_path / "ray",
        show_progress=False,
        fit=fit_on_ray(config, tmp_path / "ray", show_progress=False),
        trainer="Ray Train, 2 worker(s)",
    )
    single_accuracy, ray_accuracy = (
        summary.clean.query("variant == 'normal'").set_index("attribute")["accuracy"]
        for summary in (single, distributed)
    )
    assert single_accuracy.mean() >= 0.9, single_accuracy
    assert ray_accuracy.mean() >= 0.9, ray_accuracy
    assert (ray_accuracy - single_accuracy).abs().max() <= 0.05, (ray_accuracy, single_accuracy)
    assert _weights(single.run_dir) != _weights(distributed.run_dir)  # really trained apart


def test_a_rerun_resumes_from_the_ray_train_checkpoint_instead_of_retraining(
    tmp_path: Path,
) -> None:
    config = _with_workers(TINY, 1, train={**TINY["train"], "epochs": 2})
    run_dir = tmp_path / "run"
    first = FitRequest(_initial_model(config), config, run_dir)
    [history] = fit_many_on_ray([first], show_progress=False)
    # The driver died before writing checkpoints/normal.*: Ray Train's checkpoint remains.
    again = FitRequest(_initial_model(config), config, run_dir)
    [resumed] = fit_many_on_ray([again], show_progress=False)
    assert resumed == history  # the recorded epochs (their timings too), not new ones
    for name, tensor in first.model.state_dict().items():
        assert again.model.state_dict()[name].equal(tensor), name
    # With restart (`--force`) it trains afresh: new epoch timings.
    fresh = _initial_model(config)
    retrained = fit_on_ray(config, run_dir, restart=True, show_progress=False)(fresh, None)
    assert [r.epoch for r in retrained] == [1, 2]
    assert [r.seconds for r in retrained] != [r.seconds for r in history]
