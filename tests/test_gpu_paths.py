"""The CUDA paths (`train.device: cuda`, evaluator tasks given a GPU): they run on a GPU and
agree with the CPU. Skipped without a CUDA device; run on a GPU machine with
`pytest tests/test_gpu_paths.py`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from cluster.config import parse_config
from robustness.jobs import run_job
from robustness.perturbations import Family
from robustness.perturbations.native import NATIVE_CORRUPTIONS, Fidelity
from robustness.runner import TrainRunSummary, prepare_sweep, train_run
from tests.conftest import SMALL_SWEEP, TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_every_kind_of_job_runs_on_the_gpu_and_agrees_with_the_cpu(
    tiny_run: TrainRunSummary, tmp_path: Path
) -> None:
    sweep = prepare_sweep(tiny_run.run_dir, parse_config({**TINY, "robustness": SMALL_SWEEP}))
    one_per_kind = {}
    for job in sweep.jobs:  # clean, each noise, each corruption, each attack
        one_per_kind.setdefault((job.family, job.perturbation), job)
    # One deepcopy of the dict keeps the variants' shared weights shared on the GPU too.
    gpu_models = {name: model.to("cuda") for name, model in copy.deepcopy(sweep.models).items()}
    torch.set_grad_enabled(True)
    for (family, name), job in one_per_kind.items():
        gpu_rows = run_job(job, gpu_models, sweep.images, sweep.labels, device="cuda")
        cpu_rows = run_job(job, sweep.models, sweep.images, sweep.labels)
        assert len(gpu_rows) == len(cpu_rows), name
        for gpu, cpu in zip(gpu_rows, cpu_rows, strict=True):
            assert (gpu["job_id"], gpu["variant"], gpu["attribute"]) == (
                cpu["job_id"],
                cpu["variant"],
                cpu["attribute"],
            )
            # Float differences may flip a sample at a decision boundary, no more. Random
            # draws on the GPU come from the GPU's generator: noise, and the random corruptions
            # that the native engine serves, differ from the CPU's draws.
            random_on_gpu = family in (Family.NOISE, Family.ADVERSARIAL) or (
                dict(job.params).get("engine") == "native"
                and NATIVE_CORRUPTIONS[name].fidelity is Fidelity.RANDOM
            )
            tolerance = 0.25 if random_on_gpu else 0.05
            agree = sum(a == b for a, b in zip(gpu["outcomes"], cpu["outcomes"], strict=True))
            assert agree >= (1 - tolerance) * gpu["n"], (name, gpu["attribute"], agree, gpu["n"])
            # Attention drift is measured on the GPU too, for the same rows.
            assert (gpu["mask_cosine"] is None) == (cpu["mask_cosine"] is None), name
            if gpu["mask_cosine"] is not None:
                assert -1e-6 <= gpu["mask_cosine"] <= 1 + 1e-6, (name, gpu["mask_cosine"])


def test_training_on_the_gpu_reaches_the_cpu_accuracy_band(tmp_path: Path) -> None:
    raw = {
        **TINY,
        "data": {**TINY["data"], "n_train": 2048, "n_test": 512},
        "train": {**TINY["train"], "epochs": 8, "batch_size": 64, "lr": 0.01},
    }
    accuracy = {}
    for device in ["cpu", "cuda"]:
        config = parse_config({**raw, "train": {**raw["train"], "device": device}})
        summary = train_run(config, tmp_path / device, show_progress=False)
        normal = summary.clean.query("variant == 'normal'").set_index("attribute")["accuracy"]
        accuracy[device] = normal
    assert accuracy["cuda"].mean() >= 0.9, accuracy
    assert (accuracy["cuda"] - accuracy["cpu"]).abs().max() <= 0.05, accuracy
