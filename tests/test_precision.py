"""`robustness.precision`: bf16 autocast for inference and attacks, on the CPU here (the CUDA
path adds channels_last; its speed is measured by benchmarks/gpu_precision.py where a GPU is)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cluster.config import parse_config
from iamt.config import ConfigError
from robustness import runner
from robustness.config import Precision
from robustness.jobs import run_job
from robustness.perturbations import Family
from robustness.precision import autocast, prepare_models
from robustness.runner import TrainRunSummary
from tests.conftest import SMALL_SWEEP, TINY


def test_fp32_jobs_keep_their_ids_and_bf16_jobs_keep_their_seeds(
    tiny_run: TrainRunSummary,
) -> None:
    config = parse_config({**TINY, "robustness": SMALL_SWEEP})
    fp32 = runner.prepare_sweep(tiny_run.run_dir, config).jobs
    assert all("precision" not in job.spec() for job in fp32)  # ids from before the choice
    bf16 = [dataclasses.replace(job, precision=Precision.BF16) for job in fp32]
    assert {a.job_id for a in fp32}.isdisjoint(b.job_id for b in bf16)  # never mixed up
    assert [a.seed for a in fp32] == [b.seed for b in bf16]  # the same draws: paired


def test_an_unknown_precision_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"fp16.*(fp32|bf16)|(fp32|bf16).*fp16"):
        parse_config({**TINY, "robustness": {"precision": "fp16"}})


def test_bf16_runs_the_forwards_in_bf16_and_leaves_fp32_alone(tiny_run: TrainRunSummary) -> None:
    model = runner.load_trained(tiny_run.run_dir)[0].eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad(), autocast(Precision.BF16, "cpu"):
        assert model(images).logits[0].dtype is torch.bfloat16
    with torch.no_grad(), autocast(Precision.FP32, "cpu"):
        assert model(images).logits[0].dtype is torch.float32
    prepared = prepare_models({"normal": model}, torch.device("cpu"), Precision.BF16)
    assert prepared["normal"] is model  # channels_last is for CUDA only


def test_a_bf16_sweep_runs_every_family_on_the_cpu_close_to_fp32(
    tiny_run: TrainRunSummary, tmp_path: Path
) -> None:
    config = parse_config({**TINY, "robustness": SMALL_SWEEP})
    sweep = runner.prepare_sweep(tiny_run.run_dir, config)
    picked = {}
    for job in sweep.jobs:  # one job of each family, fgsm for the attacks
        if job.family not in picked and job.perturbation not in ("boundary", "l2_deepfool"):
            picked[job.family] = job
    assert set(picked) == {Family.CLEAN, Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL}
    for job in picked.values():
        with torch.enable_grad():
            exact = run_job(job, sweep.models, sweep.images, sweep.labels, drift_samples=8)
            bf16 = dataclasses.replace(job, precision=Precision.BF16)
            rounded = run_job(bf16, sweep.models, sweep.images, sweep.labels, drift_samples=8)
        assert [(r["variant"], r["attribute"]) for r in rounded] == [
            (r["variant"], r["attribute"]) for r in exact
        ]
        for fp32_row, bf16_row in zip(exact, rounded, strict=True):
            # Paired on the same images: bf16 may flip a few borderline predictions only.
            flipped = sum(
                a != b for a, b in zip(fp32_row["outcomes"], bf16_row["outcomes"], strict=True)
            )
            assert flipped <= max(2, fp32_row["n"] // 10), (job.describe(), fp32_row["variant"])
