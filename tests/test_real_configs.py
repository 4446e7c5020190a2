"""The shipped real-data configs (configs/celeba.yaml, configs/cifar10.yaml): valid as shipped,
with the GPU placement they promise, and runnable end to end by `iamt run`'s pipeline on the
on-disk fixtures of tests/test_real_loaders.py (the datasets' real formats), shrunk by
overrides to seconds on a CPU: Ray Train, the sweep on Ray, summary and report."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray

from cluster.config import RunConfig, load_config
from cluster.pipeline import check_resources_fit, run_pipeline
from cluster.sweep import init_local_ray
from iamt.config import Backbone
from iamt.data.base import DatasetName
from tests.test_real_loaders import CELEBA_NAMES, write_celeba, write_cifar

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
REAL_CONFIGS = ["celeba", "cifar10"]

# Each dataset's fixture writer, and the split sizes (train, val, test) read from it.
FIXTURES: dict[str, Callable[[Path], Any]] = {"celeba": write_celeba, "cifar10": write_cifar}
SPLIT_SIZES = {"celeba": (4, 3, 2), "cifar10": (8, 2, 4)}  # ≤ what each fixture holds

# Placement for one small CPU: the shipped configs ask for 4 GPU workers and GPU evaluators.
ON_THIS_CPU = [
    "cluster.num_cpus=2",
    "cluster.train.use_gpu=false",
    "cluster.train.num_workers=1",
    "cluster.train.cpus_per_worker=1",
    "cluster.sweep.num_gpus=0",
    "cluster.sweep.num_cpus=1",
    "cluster.sweep.max_in_flight=2",
]
# One perturbation per family, a couple of samples each.
TINY_SWEEP = [
    "robustness.shard_size=2",
    "robustness.batch_size=4",
    "robustness.noise.types=[gaussian]",
    "robustness.noise.strengths=[0.1]",
    "robustness.noise.n_samples=2",
    "robustness.corruptions.names=[pixelate]",
    "robustness.corruptions.severities=[3]",
    "robustness.corruptions.n_samples=2",
    "robustness.attacks.linf_epsilons=[0.03]",
    "robustness.attacks.n_samples=2",
    "robustness.attacks.methods=[{name: fgsm}]",
]
EXPECTED_PERTURBATIONS = {
    ("clean", "none"),
    ("noise", "gaussian"),
    ("corruption", "pixelate"),
    ("adversarial", "fgsm"),
    ("transfer", "fgsm"),
}


def _shipped(name: str) -> RunConfig:
    return load_config(CONFIGS / f"{name}.yaml")


def _tiny_overrides(name: str, root: Path) -> list[str]:
    n_train, n_val, n_test = SPLIT_SIZES[name]
    return [
        f"data.root={root}",
        "data.image_size=32",  # CelebA ships at 128 px; the ResNet-18 trunk stays as shipped
        f"data.n_train={n_train}",
        f"data.n_val={n_val}",
        f"data.n_test={n_test}",
        "model.attention_hidden=8",
        "model.head_channels=8",
        "train.epochs=1",
        "train.batch_size=4",
        "train.device=cpu",
        f"importance.n_samples={n_val}",
        *TINY_SWEEP,
        *ON_THIS_CPU,
        # A two-trial search on the validation split; any clean cost is accepted, so that the
        # sweep always gains the searched variant.
        "search.max_trials=2",
        f"search.n_samples={n_val}",
        "search.noise_types=[gaussian]",
        "search.noise_strengths=[0.1]",
        "search.corruptions=[pixelate]",
        "search.attack=null",
        "search.max_clean_cost=100",
    ]


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_shipped_real_config_is_valid_and_asks_for_gpus(name: str) -> None:
    config = _shipped(name)  # no overrides: every key is valid as shipped
    assert config.name == name and config.data.name is DatasetName(name)
    assert config.model.backbone is Backbone.RESNET18
    if name == "celeba":
        assert 64 <= config.data.image_size <= 128
        assert config.data.attributes is not None
        assert set(config.data.attributes) <= set(CELEBA_NAMES)
    else:
        assert config.data.image_size == 32 and config.data.attributes is None
    train, sweep = config.cluster.train, config.cluster.sweep
    assert (train.num_workers, train.use_gpu, train.gpus_per_worker) == (4, True, 1)
    assert train.cpus_per_worker == {"celeba": 4, "cifar10": 2}[name]
    assert sweep.num_gpus == 0.25 and sweep.num_cpus == {"celeba": 2, "cifar10": 1}[name]
    assert config.cluster.address is None  # `ray job submit` provides $RAY_ADDRESS
    # One 4-GPU node with 32 CPUs holds every ask; a machine without GPUs is refused up front.
    assert check_resources_fit(config, {"CPU": 32.0, "GPU": 4.0}) == []
    refusals = check_resources_fit(config, {"CPU": 32.0, "GPU": 0.0})
    assert any("cluster.sweep.num_gpus" in line for line in refusals), refusals
    assert any("gpus_per_worker" in line for line in refusals), refusals


# Ray Train's controller polls its workers every 2 s and starts a preemption-watcher actor:
# negligible on a cluster, a good part of a one-epoch run on 2 cores. Placement only.
FAST_RAY_TRAIN = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


@ray.remote(num_cpus=1)
def _import_in_worker() -> int:
    """Warm a pooled Ray worker: the imports of Ray Train's launcher task and of an evaluator
    take ~7 s in a fresh process here, which would land on whichever test runs first."""
    import cluster.train  # noqa: F401
    import robustness.runner  # noqa: F401

    return os.getpid()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in FAST_RAY_TRAIN.items():  # inherited by every Ray process
            patch.setenv(key, value)
        init_local_ray(num_cpus=2)
        ray.get([_import_in_worker.remote() for _ in range(2)])
        yield
        ray.shutdown()


@pytest.mark.e2e
@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_shipped_real_config_runs_the_whole_pipeline_on_its_fixture(
    name: str, local_ray: None, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    FIXTURES[name](root)
    shipped = _shipped(name)
    config = load_config(CONFIGS / f"{name}.yaml", _tiny_overrides(name, root))
    # Only sizes and placement changed: the model family and the variants are the shipped ones.
    assert config.model.backbone is shipped.model.backbone is Backbone.RESNET18
    assert config.model.mask_mode is shipped.model.mask_mode
    assert config.emphasis == shipped.emphasis
    assert config.data.attributes == shipped.data.attributes

    run_dir = tmp_path / "run"
    result = run_pipeline(config, run_dir, show_progress=False)

    assert result.trained
    assert result.jobs["failed"] == 0 and result.jobs["done"] == result.jobs["total"] > 0
    for file in ["results.csv", "summary.csv", "report.html"]:
        assert (run_dir / file).is_file(), file
    assert result.report == run_dir / "report.html"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["stage"] == "done"
    assert manifest["ray"] == "embedded local Ray (127.0.0.1)"

    attributes = shipped.data.attributes or ["class"]  # CIFAR-10: one 10-class attribute
    assert shipped.search.enabled
    search = json.loads((run_dir / "search.json").read_text())
    assert search["split"] == "val" and search["chosen"] is not None
    assert len(pd.read_csv(run_dir / "search.csv")) == 2  # identity + one sampled candidate
    variants = {"normal", *shipped.emphasis.variants, shipped.search.variant}
    results = pd.read_csv(run_dir / "results.csv", dtype={"job_id": str})
    assert set(results["dataset"]) == {name}
    assert set(results["attribute"]) == set(attributes)
    assert set(results["variant"]) == variants
    for (variant, attribute), rows in results.groupby(["variant", "attribute"]):
        found = set(zip(rows["family"], rows["perturbation"], strict=True))
        assert found == EXPECTED_PERTURBATIONS, (variant, attribute)
    summary = pd.read_csv(run_dir / "summary.csv")
    assert set(summary["attribute"]) == set(attributes)
    assert set(summary["variant"]) == variants
