"""The shared-trunk figures (issue 19): every variant is a view of one AttentionNet, so on a
model-independent batch (clean, noise, corruptions) the trunk F = f(x) and the masks
M_a = σ(g_a(F)) are computed once, and each variant adds only T(M_a), F'_a and its heads.

These figures register into `benchmarks.figures.FIGURES` when this module is imported (at the
end of that module), like the perturbations register into theirs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from benchmarks.figures import Bench, Figure, corruption_sweep, only_family, register
from iamt.model import AttentionNet, Backbone, build_model, predicted_classes, transform_masks
from iamt.train import seed_everything
from iamt.variants import SharedVariants, parse_spec, transform_of, variant_model
from iamt.vocabulary import NORMAL
from robustness.drift import DriftAccumulator
from robustness.jobs import Job, run_job
from robustness.limits import single_thread
from robustness.perturbations import Family, ImagePerturbation, create_perturbation
from robustness.runner import Sweep

# 15 emphasized transforms besides `normal`: the 16 variants of shared_variants_resnet18.
SIXTEEN_VARIANTS = {
    f"top{k}_alpha{str(alpha).replace('.', '')}": f"topk:k={k},alpha={alpha}"
    for k in (4, 8, 16, 32, 64)
    for alpha in (1.5, 2, 3)
}
# The 4 variants of variant_floor and shared_variants_vs_separate: normal and one of each family.
FOUR_VARIANTS = {
    "top8": "topk:k=8,alpha=2",
    "suppress": "suppress:k=8,beta=0.5",
    "power": "power:gamma=0.5",
}
# The shared-trunk figures corrupt with the native engine: cheap images, so that a figure
# shows the models' cost rather than the reference engine's per-image loop.
NATIVE = "native"

# configs/cifar10.yaml's network: a ResNet-18 trunk to layer3 (256 channels), one attribute.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def resnet18_variants(sweep: Sweep, names: Mapping[str, str]) -> dict[str, nn.Module]:
    """configs/cifar10.yaml's network (a ResNet-18 trunk to layer3, attention_hidden and
    head_channels 128, one 10-class attribute) at the sweep's 32 px, with `names`' variants.
    Untrained and seeded: timings need its shapes, not its accuracy; importance is a seeded
    random score."""
    small = sweep.models[NORMAL]
    assert isinstance(small, AttentionNet)
    architecture = small.architecture.model_copy(
        update={
            "backbone": Backbone.RESNET18,
            "attention_hidden": 128,
            "head_channels": 128,
            "attribute_names": ("class",),
            "attribute_classes": (CIFAR10_CLASSES,),
        }
    )
    seed_everything(0)
    base = build_model(architecture).eval()
    generator = torch.Generator().manual_seed(0)
    importance = torch.rand(base.num_attributes, base.num_channels, generator=generator)
    models: dict[str, nn.Module] = {NORMAL: base}
    for name, spec in names.items():
        transform = parse_spec(spec, base.num_channels, f"benchmark variant {name}")
        models[name] = variant_model(base, transform, importance).eval()
    return models


def as_one_attribute(jobs: list[Job], variants: tuple[str, ...]) -> list[Job]:
    """`jobs` for the one-attribute network, evaluating `variants`; its labels are the
    first attribute's (any labels do: the figure times, it does not score)."""
    return [dataclasses.replace(job, variants=variants, attribute_names=("class",)) for job in jobs]


def evaluate_jobs(
    jobs: list[Job],
    models: Mapping[str, nn.Module],
    sweep: Sweep,
    bench: Bench,
    *,
    share_trunk: bool = True,
    labels: Tensor | None = None,
) -> float:
    """Seconds `run_job` takes over `jobs` in this process (the caller sets the threads)."""
    start = time.perf_counter()
    for job in jobs:
        run_job(
            job,
            models,
            sweep.images,
            sweep.labels if labels is None else labels,
            device=bench.device,
            drift_samples=sweep.config.robustness.drift_samples,
            share_trunk=share_trunk,
        )
    return time.perf_counter() - start


@register
def shared_variants_resnet18(bench: Bench) -> Figure:
    figure = Figure(
        "shared_variants_resnet18",
        "corruption jobs on a ResNet-18 trunk at 32 px: 16 variants ÷ 1 variant",
        1.5,
        higher_is_better=False,
    )
    samples, shard = (100, 100) if bench.quick else (500, 250)
    sweep = only_family(
        bench.sweep(corruption_sweep(bench, samples, shard, engine=NATIVE), SIXTEEN_VARIANTS),
        Family.CORRUPTION,
    )
    models = {n: m.to(bench.device) for n, m in resnet18_variants(sweep, SIXTEEN_VARIANTS).items()}
    sixteen = as_one_attribute(sweep.jobs, tuple(models))
    one = as_one_attribute(sweep.jobs, (NORMAL,))
    labels = sweep.labels[:, :1]
    figure.parameters = {"variants": len(models), "jobs": len(sweep.jobs), "samples": samples}
    with single_thread():
        evaluate_jobs(one[:1], models, sweep, bench, labels=labels)  # warm-up
        for _ in range(bench.repeats):
            alone = evaluate_jobs(one, models, sweep, bench, labels=labels)
            together = evaluate_jobs(sixteen, models, sweep, bench, labels=labels)
            figure.raw.append({"sixteen_variants_s": together, "one_variant_s": alone})
            figure.ratios.append(together / alone)
    return figure


def _together_vs_separate(
    bench: Bench,
    figure: Figure,
    models: Mapping[str, nn.Module],
    sweep: Sweep,
    jobs: list[Job],
    labels: Tensor,
) -> Figure:
    figure.parameters = {"variants": len(models), "jobs": len(jobs)}
    with single_thread():
        evaluate_jobs(jobs[:1], models, sweep, bench, labels=labels)  # warm-up
        for _ in range(bench.repeats):
            separate = evaluate_jobs(jobs, models, sweep, bench, share_trunk=False, labels=labels)
            together = evaluate_jobs(jobs, models, sweep, bench, labels=labels)
            figure.raw.append({"together_s": together, "separate_s": separate})
            figure.ratios.append(together / separate)
    return figure


def _four_variant_sweep(bench: Bench) -> Sweep:
    samples, shard = (100, 100) if bench.quick else (500, 250)
    sweep = bench.sweep(corruption_sweep(bench, samples, shard, engine=NATIVE), FOUR_VARIANTS)
    return only_family(sweep, Family.CORRUPTION)


@register
def shared_variants_vs_separate(bench: Bench) -> Figure:
    figure = Figure(
        "shared_variants_vs_separate",
        "corruption jobs, 4 variants of the demo model evaluated together (one trunk and "
        "attention pass) ÷ the same 4 as separate models, each its own full forward",
        0.6,
        higher_is_better=False,
    )
    sweep = _four_variant_sweep(bench)
    models = {name: model.to(bench.device) for name, model in sweep.models.items()}
    return _together_vs_separate(bench, figure, models, sweep, sweep.jobs, sweep.labels)


@register
def shared_variants_vs_separate_resnet18(bench: Bench) -> Figure:
    figure = Figure(
        "shared_variants_vs_separate_resnet18",
        "as shared_variants_vs_separate, on configs/cifar10.yaml's ResNet-18 network at 32 px",
        0.6,
        higher_is_better=False,
    )
    sweep = _four_variant_sweep(bench)
    models = {n: m.to(bench.device) for n, m in resnet18_variants(sweep, FOUR_VARIANTS).items()}
    jobs = as_one_attribute(sweep.jobs, tuple(models))
    return _together_vs_separate(bench, figure, models, sweep, jobs, sweep.labels[:, :1])


# ----------------------------------------------------------------- variant_floor's floor


@dataclass
class FloorSeconds:
    """What a job's compute cannot avoid, in seconds: making its images, the models' shared
    inference, and drift's statistics on the masks that inference gives (the job's output)."""

    perturb: float = 0.0
    inference: float = 0.0
    drift: float = 0.0


def shard_floor(
    base: AttentionNet,
    views: Mapping[str, nn.Module],
    clean: Tensor,
    perturbed: Tensor,
    batch_size: int,
    drift_samples: int,
    seconds: FloorSeconds,
) -> None:
    """Add one shard's floor to `seconds`: per batch of `perturbed`, F and the M_a once, then
    each variant's T(M_a), heads and predicted classes; on the first `drift_samples` clean
    images the M_a once and each variant's T(M_a), then its drift statistics."""
    for start in range(0, len(perturbed), batch_size):
        measured = max(0, min(batch_size, drift_samples - start))
        tick = time.perf_counter()
        features, masks = base.features_and_masks(perturbed[start : start + batch_size])
        clean_masks = base.features_and_masks(clean[start : start + measured])[1]
        pairs = []
        for model in views.values():
            transform, rankings = transform_of(model)
            output = base.heads_from_masks(
                features, masks, transform=transform, rankings=rankings, return_masks=True
            )
            predicted_classes(output.logits).cpu()
            if measured:
                assert output.masks is not None
                clean_transformed = transform_masks(clean_masks, transform, rankings)
                pairs.append((clean_transformed, [m[:measured] for m in output.masks]))
        tock = time.perf_counter()
        seconds.inference += tock - tick
        for clean_transformed, perturbed_masks in pairs:
            accumulator = DriftAccumulator(len(perturbed_masks))
            accumulator.update(clean_transformed, perturbed_masks)
            accumulator.result()
        seconds.drift += time.perf_counter() - tock


def variant_floor_seconds(
    sweep: Sweep, models: Mapping[str, nn.Module], images: Tensor
) -> FloorSeconds:
    """The floor of `sweep`'s image jobs: each shard perturbed once, then `shard_floor`."""
    base = SharedVariants(models).base
    assert base is not None, "variant_floor's variants must be views of one AttentionNet"
    drift_samples = sweep.config.robustness.drift_samples
    seconds = FloorSeconds()
    with torch.no_grad():
        for job in sweep.jobs:
            x = images[job.shard_start : job.shard_stop]
            perturbation = create_perturbation(job.perturbation, **dict(job.params))
            assert isinstance(perturbation, ImagePerturbation) and job.strength is not None
            start = time.perf_counter()
            corrupted = perturbation(x, job.strength, seed=job.seed)
            seconds.perturb += time.perf_counter() - start
            shard_floor(base, models, x, corrupted, job.batch_size, drift_samples, seconds)
    return seconds


@register
def variant_floor(bench: Bench) -> Figure:
    figure = Figure(
        "variant_floor",
        "corruption jobs with 4 variants ÷ (perturb once + the trunk and attention once + each "
        "variant's T and heads; the same shared pass, no heads, on the drift_samples clean "
        "images, and the drift statistics on those masks)",
        1.10,
        higher_is_better=False,
    )
    samples, shard = (100, 100) if bench.quick else (500, 250)
    sweep = only_family(
        bench.sweep(corruption_sweep(bench, samples, shard), FOUR_VARIANTS), Family.CORRUPTION
    )
    figure.parameters = {"variants": 4, "jobs": len(sweep.jobs), "samples": samples}
    models = {name: model.to(bench.device) for name, model in sweep.models.items()}
    images = sweep.images.to(bench.device)
    with single_thread():
        for _ in range(bench.repeats):
            floor = variant_floor_seconds(sweep, models, images)
            total = evaluate_jobs(sweep.jobs, models, sweep, bench)
            figure.raw.append({"sweep_s": total, **{f"{k}_s": v for k, v in asdict(floor).items()}})
            figure.ratios.append(total / (floor.perturb + floor.inference + floor.drift))
    return figure


__all__ = ["FOUR_VARIANTS", "SIXTEEN_VARIANTS", "variant_floor_seconds"]
