"""GPU figures of issue 19: bf16 against fp32, and a CIFAR-10-C-sized sweep on one GPU.

    python -m benchmarks.gpu_precision [--device cuda] [--images 10000] [--demo-run RUN_DIR]

1. `bf16_speedup`: a 4-variant ResNet-18 AttentionNet at 32 px (random weights: speed does not
   depend on them) classifying one batch of corrupted images, fp32 wall ÷ bf16 wall.
2. `cifar10c_sweep_s`: the wall time of 10,000 images × 19 corruptions × 5 severities, 4
   variants sharing one trunk pass, native engine, on one device (target <= 60 s on a GPU).
3. With `--demo-run` (a trained `iamt train configs/demo.yaml` run): the demo's noise and
   corruption jobs at fp32 and at bf16 on the same images, and the paired accuracy difference
   (bf16 − fp32, points) with the number of predictions that flipped.

Writes benchmarks/results/gpu_precision.json. `--device cpu --images 64` runs it anywhere
as a smoke test (the figures are then not the GPU ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cluster.config import load_run_config
from iamt.config import Backbone, MaskMode
from iamt.data.shapes import SHAPES_ATTRIBUTES
from iamt.model import Architecture, build_model, feature_channels
from iamt.variants import parse_spec, variant_models
from robustness import runner
from robustness.config import Precision, RobustnessConfig
from robustness.jobs import Job, expand_sweep, run_job
from robustness.perturbations import Family

SWEEP_TARGET_S = 60.0
VARIANTS = {"emphasized": "topk:k=32,alpha=2", "suppressed": "suppress:k=64,beta=0.5"}
VARIANTS["power"] = "power:gamma=0.5"


def resnet18_variants(device: torch.device) -> dict[str, torch.nn.Module]:
    """normal + 3 emphasized views of a random-weight ResNet-18 AttentionNet at 32 px."""
    architecture = Architecture(
        backbone=Backbone.RESNET18,
        widths=(),
        attention_hidden=128,
        head_channels=128,
        mask_mode=MaskMode.RESIDUAL,
        attribute_names=tuple(a.name for a in SHAPES_ATTRIBUTES),
        attribute_classes=tuple(a.classes for a in SHAPES_ATTRIBUTES),
        image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    model = build_model(architecture).to(device).eval()
    channels = feature_channels(Backbone.RESNET18, ())
    transforms = {"normal": parse_spec("identity", channels, "normal")}
    transforms |= {name: parse_spec(spec, channels, name) for name, spec in VARIANTS.items()}
    importance = torch.rand(
        len(SHAPES_ATTRIBUTES), channels, generator=torch.Generator().manual_seed(0)
    )
    return variant_models(model, transforms, importance.to(device))


def synchronised(device: torch.device, function: Callable[[], Any]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def corruption_jobs(images: int, precision: Precision, variants: Sequence[str]) -> list[Job]:
    robustness = RobustnessConfig.model_validate(
        {
            "shard_size": images,
            "batch_size": 1000,
            "drift_samples": 0,
            "precision": precision,
            "noise": {"types": [], "n_samples": images},
            "corruptions": {"names": "all", "engine": "native", "n_samples": images},
            "attacks": {"methods": []},
        }
    )
    attributes = [a.name for a in SHAPES_ATTRIBUTES]
    jobs = expand_sweep(
        robustness, variants=variants, attribute_names=attributes, n_available=images, run_seed=0
    )
    return [job for job in jobs if job.family is Family.CORRUPTION]


def sweep_seconds(images: int, precision: Precision, device: torch.device) -> float:
    models = resnet18_variants(device)
    data = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(images, len(SHAPES_ATTRIBUTES), dtype=torch.long)
    jobs = corruption_jobs(images, precision, list(models))
    run_job(jobs[0], models, data[:64], labels[:64], device=device)  # warm-up (cuDNN, JIT)
    return synchronised(
        device,
        lambda: [run_job(job, models, data, labels, device=device) for job in jobs],
    )


def bf16_speedup(device: torch.device, images: int) -> dict[str, float]:
    models = resnet18_variants(device)
    data = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.zeros(images, len(SHAPES_ATTRIBUTES), dtype=torch.long)
    walls = {}
    for precision in Precision:
        job = corruption_jobs(images, precision, list(models))[0]
        run_job(job, models, data, labels, device=device)  # warm-up
        once = functools.partial(run_job, job, models, data, labels, device=device)
        walls[precision.value] = min(synchronised(device, once) for _ in range(3))
    return {**walls, "bf16_speedup": walls["fp32"] / walls["bf16"]}


def demo_paired_difference(run_dir: Path, device: torch.device) -> dict[str, float]:
    """bf16 − fp32 on the demo's noise and corruption jobs, paired on the same images."""
    config = load_run_config(run_dir)
    sweep = runner.prepare_sweep(run_dir, config)
    models = {name: model.to(device) for name, model in sweep.models.items()}
    jobs = [job for job in sweep.jobs if job.family in (Family.NOISE, Family.CORRUPTION)]
    correct = {precision: 0 for precision in Precision}
    flipped = total = 0
    for job in jobs:
        rows = {
            p: run_job(
                dataclasses.replace(job, precision=p),
                models,
                sweep.images,
                sweep.labels,
                device=device,
            )
            for p in Precision
        }
        for fp32, bf16 in zip(rows[Precision.FP32], rows[Precision.BF16], strict=True):
            correct[Precision.FP32] += fp32["correct"]
            correct[Precision.BF16] += bf16["correct"]
            flipped += sum(a != b for a, b in zip(fp32["outcomes"], bf16["outcomes"], strict=True))
            total += fp32["n"]
    difference = 100.0 * (correct[Precision.BF16] - correct[Precision.FP32]) / total
    return {"paired_difference_points": difference, "flipped": flipped, "outcomes": total}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--demo-run", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_precision.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_precision: error: no CUDA device (use --device cpu for a smoke test)")
        return 2
    figures: dict[str, Any] = {"device": str(device), "images": args.images}
    figures |= bf16_speedup(device, min(args.images, 2000))
    print(f"bf16_speedup      {figures['bf16_speedup']:.2f}x  (fp32 {figures['fp32']:.3f} s)")
    figures["cifar10c_sweep_s"] = sweep_seconds(args.images, Precision.FP32, device)
    verdict = "PASS" if figures["cifar10c_sweep_s"] <= SWEEP_TARGET_S else "FAIL"
    print(f"cifar10c_sweep_s  {figures['cifar10c_sweep_s']:.1f} s <= {SWEEP_TARGET_S:g} {verdict}")
    if args.demo_run is not None:
        figures["demo"] = demo_paired_difference(args.demo_run, device)
        print(f"demo bf16 - fp32  {figures['demo']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
