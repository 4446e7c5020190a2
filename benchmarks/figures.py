"""The benchmark figures: each one a ratio of two measurements taken in the same repetition.

Shared, noisy machines make absolute times meaningless across runs; a ratio of two timings
taken back to back is stable. Every figure is measured `repeats` times and reported as the
median with its min and max. Figures register themselves (like the perturbations); `run.py`
runs them, prints one line each and writes the JSON.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import ray
import torch
import torch.nn.functional as F
from torch import Tensor

from cluster.config import RunConfig, parse_config
from cluster.sweep import init_local_ray, run_sweep_on_ray
from cluster.train import FitRequest, fit_many_on_ray
from iamt.data import Split, load_split
from iamt.model import Architecture, AttentionNet, build_model
from iamt.rundir import PARTS
from iamt.train import channel_statistics, seed_everything, train_model
from robustness.jobs import predict_all, run_job
from robustness.limits import single_thread
from robustness.perturbations import (
    Attack,
    Family,
    ImagePerturbation,
    create_perturbation,
    list_perturbations,
)
from robustness.perturbations.attacks import attribute_view
from robustness.perturbations.corruptions import corrupt_images
from robustness.perturbations.native import NATIVE_CORRUPTIONS, corrupt_natively
from robustness.perturbations.native.fidelity import fidelity_images
from robustness.runner import Sweep, finish_sweep, prepare_sweep, train_run

SWEEP_CORRUPTIONS = ["gaussian_blur", "contrast", "pixelate", "jpeg_compression", "brightness"]
SLOT = "benchmark_slot"  # Ray custom resource: 2 per machine; a task takes 1 or 2 of them


@dataclass
class Figure:
    """One benchmark figure: the ratio per repetition and what went into it."""

    name: str
    what: str
    target: float
    higher_is_better: bool
    ratios: list[float] = field(default_factory=list)
    raw: list[dict[str, float]] = field(default_factory=list)  # the timings of each repetition
    parameters: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. Ray start-up, throughputs

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def passed(self) -> bool:
        return self.median >= self.target if self.higher_is_better else self.median <= self.target

    def line(self) -> str:
        target = f"{'>=' if self.higher_is_better else '<='}{self.target:g}"
        verdict = "PASS" if self.passed else "MISS"
        return (
            f"{self.name:<16} {self.median:7.3f} {target:>7} {verdict:<4} "
            f"median {self.median:.3f} [{min(self.ratios):.3f}, {max(self.ratios):.3f}]"
        )


@dataclass
class Bench:
    """What every figure shares: a trained model, its run directory, the sizes, Ray."""

    work: Path
    run_dir: Path
    config: RunConfig
    repeats: int
    quick: bool
    use_gpu: bool
    address: str | None

    def sweep(self, robustness: dict[str, Any], variants: dict[str, str] | None = None) -> Sweep:
        """A fresh copy of the run with no parts, prepared for this robustness section."""
        target = Path(tempfile.mkdtemp(dir=self.work, prefix="sweep-"))
        shutil.rmtree(target)
        shutil.copytree(self.run_dir, target, ignore=shutil.ignore_patterns(PARTS))
        raw = self.config.model_dump(mode="json")
        raw["robustness"] = {**raw["robustness"], **robustness}
        if variants is not None:
            raw["emphasis"] = {"variants": variants}
        return prepare_sweep(target, parse_config(raw))

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.use_gpu else "cpu")


FigureFunction = Callable[[Bench], Figure]
FIGURES: dict[str, FigureFunction] = {}


def register(function: FigureFunction) -> FigureFunction:
    FIGURES[function.__name__] = function
    return function


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Seconds that `function(*args, **kwargs)` took."""
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def run_in_process(sweep: Sweep, device: torch.device) -> None:
    models = {name: model.to(device) for name, model in sweep.models.items()}
    torch.set_grad_enabled(True)
    for job in sweep.jobs:
        run_job(
            job,
            models,
            sweep.images,
            sweep.labels,
            device=device,
            drift_samples=sweep.config.robustness.drift_samples,
        )


@ray.remote
def _warm_up() -> int:
    """Import what an evaluator imports (torch, foolbox, imagecorruptions: seconds, once per
    worker process), so that worker start-up counts as Ray start-up, not as sweep time."""
    import robustness.jobs  # noqa: F401

    time.sleep(0.2)  # hold the slot, so that concurrent warm-ups land in distinct workers
    return os.getpid()


def warm_up_evaluators(evaluators: int) -> float:
    task = _warm_up.options(num_cpus=1, resources={SLOT: 2 / evaluators})
    return timed(ray.get, [task.remote() for _ in range(evaluators)])


def run_on_ray(sweep: Sweep, evaluators: int, bench: Bench) -> float:
    """Wall time of the Ray sweep with `evaluators` concurrent tasks (each takes 2 / evaluators
    of the 2 slots). Start-up is excluded: Ray is up and its worker processes are warm."""
    warm_up_evaluators(evaluators)
    seconds = timed(
        run_sweep_on_ray,
        sweep,
        max_in_flight=4,
        max_retries=0,
        num_cpus_per_task=1,
        num_gpus_per_task=(1 / evaluators) if bench.use_gpu else 0,
        resources_per_task={SLOT: 2 / evaluators},
        show_progress=False,
    )
    counts = finish_sweep(sweep)
    if counts["failed"]:
        raise RuntimeError(f"benchmark sweep had failures: {sweep.failures}")
    return seconds


def corruption_sweep(
    bench: Bench, samples: int, shard: int, *, engine: str = "reference"
) -> dict[str, Any]:
    """A robustness section of corruption jobs only: 5 corruptions × severities 1, 3, 5.
    The reference engine by default: these figures measure the service around CPU-bound work
    (the native engine has its own figure, native_corruption_speedup)."""
    del bench  # the sizes are the caller's
    return {
        "shard_size": shard,
        "batch_size": shard,
        "noise": {"types": [], "strengths": [0.1], "n_samples": 1},
        "corruptions": {
            "names": SWEEP_CORRUPTIONS,
            "severities": [1, 3, 5],
            "n_samples": samples,
            "engine": engine,
        },
        "attacks": {"methods": [], "n_samples": 1},
    }


def only_family(sweep: Sweep, family: Family) -> Sweep:
    sweep.jobs = [job for job in sweep.jobs if job.family is family]
    return sweep


# --------------------------------------------------------------------------- the figures


@register
def sweep_overhead(bench: Bench) -> Figure:
    figure = Figure(
        "sweep_overhead",
        "Ray sweep with 1 evaluator ÷ the same jobs in one process (run_job)",
        1.10,
        higher_is_better=False,
    )
    # The demo's job size (shard_size 500): ~0.5 s per corruption job on one thread.
    samples, shard = (100, 50) if bench.quick else (500, 500)
    robustness = corruption_sweep(bench, samples, shard)
    figure.parameters = {"jobs": "5 corruptions × 3 severities", "samples": samples, "shard": shard}
    for repetition in range(bench.repeats + 1):
        local = bench.sweep(robustness)
        only_family(local, Family.CORRUPTION)
        with single_thread():
            in_process = timed(run_in_process, local, bench.device)
        remote = only_family(bench.sweep(robustness), Family.CORRUPTION)
        on_ray = run_on_ray(remote, 1, bench)
        if repetition == 0:  # warm-up: worker processes import, JIT and cache the models
            figure.notes["warm_up_ratio"] = on_ray / in_process
            continue
        figure.raw.append({"in_process_s": in_process, "ray_s": on_ray, "jobs": len(local.jobs)})
        figure.ratios.append(on_ray / in_process)
    return figure


@register
def scaling_2w(bench: Bench) -> Figure:
    figure = Figure(
        "scaling_2w",
        "CPU-bound corruption sweep: 1 evaluator ÷ 2 evaluators",
        1.8,
        higher_is_better=True,
    )
    samples, shard = (200, 25) if bench.quick else (800, 200)
    robustness = corruption_sweep(bench, samples, shard)
    figure.parameters = {"samples": samples, "shard": shard}
    for repetition in range(bench.repeats + 1):
        one = run_on_ray(only_family(bench.sweep(robustness), Family.CORRUPTION), 1, bench)
        two = run_on_ray(only_family(bench.sweep(robustness), Family.CORRUPTION), 2, bench)
        if repetition == 0:  # warm-up, as in sweep_overhead
            figure.notes["warm_up_ratio"] = one / two
            continue
        figure.raw.append({"one_evaluator_s": one, "two_evaluators_s": two})
        figure.ratios.append(one / two)
    figure.parameters["jobs"] = len(only_family(bench.sweep(robustness), Family.CORRUPTION).jobs)
    return figure


@register
def pgd_overhead(bench: Bench) -> Figure:
    steps = 10
    figure = Figure(
        "pgd_overhead",
        f"our L∞ PGD with {steps} steps ÷ {steps} × one forward+backward (same model, batch)",
        1.15,
        higher_is_better=False,
    )
    batch = 64 if bench.quick else 256
    sweep = bench.sweep({})
    model = attribute_view(sweep.models["normal"].to(bench.device), 0)
    x = sweep.images[:batch].to(bench.device)
    y = sweep.labels[:batch, 0].to(bench.device)
    attack = create_perturbation("linf_pgd", steps=steps)
    assert isinstance(attack, Attack)
    figure.parameters = {"steps": steps, "batch": batch, "epsilon": 8 / 255}

    def forward_backward() -> None:
        images = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(images), y)
        (grad,) = torch.autograd.grad(loss, images)
        float(grad.sum())  # wait for the device

    with single_thread(), torch.enable_grad():
        for _ in range(bench.repeats):
            one = statistics.median(timed(forward_backward) for _ in range(5))
            pgd = timed(attack, model, x, y, [8 / 255], seed=0)
            figure.raw.append({"pgd_s": pgd, "forward_backward_s": one})
            figure.ratios.append(pgd / (steps * one))
    return figure


def _initial(config: RunConfig) -> AttentionNet:
    train_set = load_split(config.data, Split.TRAIN, config.seed)
    mean, std = channel_statistics(train_set)
    architecture = Architecture.from_config(
        config.model, train_set.attributes, config.data.image_size, mean, std
    )
    seed_everything(config.seed)
    return build_model(architecture)


@register
def train_overhead(bench: Bench) -> Figure:
    figure = Figure(
        "train_overhead",
        "Ray Train (1 worker) time per epoch ÷ the single-process loop's (start-up apart)",
        1.15,
        higher_is_better=False,
    )
    # Per-epoch time = (end of epoch 3 − end of epoch 1) / 2 within one training: start-up
    # (a few seconds that vary a lot between runs) drops out, and on Ray every per-epoch cost
    # (the checkpoint, the report) is counted: the relay stamps an epoch after its report.
    n_train = 1024 if bench.quick else 2048
    epochs = 3
    raw = bench.config.model_dump(mode="json")
    raw["data"]["n_train"] = n_train
    raw["train"]["epochs"] = epochs
    raw["cluster"]["train"] = {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": bench.use_gpu}
    config = parse_config(raw)
    train_set = load_split(config.data, Split.TRAIN, config.seed)
    figure.parameters = {"n_train": n_train, "epochs": epochs, "workers": 1}
    startups = []
    for _ in range(bench.repeats):
        with single_thread():
            history = train_model(
                _initial(config),
                train_set,
                config.train,
                seed=config.seed,
                device=bench.device,
                show_progress=False,
            )
        single = sum(record.seconds for record in history[1:]) / (epochs - 1)
        request = FitRequest(
            _initial(config), config, Path(tempfile.mkdtemp(dir=bench.work, prefix="train-"))
        )
        total = timed(fit_many_on_ray, [request], show_progress=False)
        ends = request.epoch_ends
        assert len(ends) == epochs, f"the relay saw {len(ends)} of {epochs} epochs end"
        on_ray = (ends[-1] - ends[0]) / (epochs - 1)
        startups.append(total - epochs * on_ray)
        figure.raw.append({"single_epoch_s": single, "ray_epoch_s": on_ray, "ray_total_s": total})
        figure.ratios.append(on_ray / single)
    figure.notes["ray_train_startup_s"] = statistics.median(startups)
    return figure


class PeakRss:
    """Samples a process's resident memory every 20 ms while the block runs."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _tiny_job_sweep(bench: Bench, jobs: int) -> Sweep:
    """`jobs` clean jobs of one image each: the scheduler's and driver's worst case."""
    target = Path(tempfile.mkdtemp(dir=bench.work, prefix="tiny-"))
    shutil.rmtree(target)
    shutil.copytree(bench.run_dir, target)
    raw = bench.config.model_dump(mode="json")
    raw["data"]["n_test"] = jobs
    raw["robustness"] = {
        "shard_size": 1,
        "batch_size": 1,
        "noise": {"types": [], "strengths": [0.1], "n_samples": jobs},
        "corruptions": {"names": [], "severities": [1], "n_samples": 1},
        "attacks": {"methods": [], "n_samples": 1},
    }
    sweep = prepare_sweep(target, parse_config(raw))
    return only_family(sweep, Family.CLEAN)


@register
def driver_rss(bench: Bench) -> Figure:
    jobs = 1000 if bench.quick else 10_000
    figure = Figure(
        "driver_rss",
        f"driver's peak RSS during a {jobs:,}-job sweep of tiny jobs ÷ its RSS at the start",
        1.5,
        higher_is_better=False,
    )
    figure.parameters = {"jobs": jobs, "max_in_flight": 64}
    process = psutil.Process()
    rates = []
    for _ in range(bench.repeats):
        sweep = _tiny_job_sweep(bench, jobs)
        start_rss = process.memory_info().rss
        with PeakRss(process) as peak:
            seconds = timed(
                run_sweep_on_ray, sweep, max_in_flight=64, max_retries=0, show_progress=False
            )
        if sweep.failures:
            raise RuntimeError(f"tiny-job sweep had failures: {sweep.failures[:3]}")
        rates.append(len(sweep.jobs) / seconds)
        figure.raw.append(
            {"start_rss_mb": start_rss / 2**20, "peak_rss_mb": peak.peak / 2**20, "s": seconds}
        )
        figure.ratios.append(peak.peak / start_rss)
    figure.notes["tiny_jobs_per_s"] = statistics.median(rates)
    return figure


@register
def native_corruption_speedup(bench: Bench) -> Figure:
    """The reference's per-image loop ÷ the native batched engine on the same images, summed
    over every corruption with a native engine × severities 1–5, one thread each."""
    count = 32 if bench.quick else 256
    names = sorted(NATIVE_CORRUPTIONS)
    figure = Figure(
        "native_corruption_speedup",
        f"reference per-image loop ÷ native batched engine, {count} images at 32 px, "
        f"{len(names)} corruptions × 5 severities, one thread",
        20.0,
        higher_is_better=True,
    )
    images = fidelity_images(count, 32, seed=0).to(bench.device)
    figure.parameters = {
        "images": count,
        "size": 32,
        "corruptions": names,
        "device": str(bench.device),
    }
    figure.notes["without_native_engine"] = sorted(
        set(list_perturbations(Family.CORRUPTION)) - set(names)
    )
    with single_thread():
        # Untimed warm-up: numba compiles glass_blur; the native engine builds its per-severity
        # tables (filter matrices, alias tables, frost textures) once per process, as a sweep's
        # worker does; that one-off cost is reported beside the figure, not in it.
        one_off = 0.0
        for name in names:
            corrupt_images(images[:2].cpu(), name, 1, seed=0)
            for severity in range(1, 6):
                one_off += timed(_synchronised, corrupt_natively, images[:2], name, severity, 0)
        figure.notes["native_first_calls_s"] = round(one_off, 3)
        per_name: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(bench.repeats):
            totals = {"reference_s": 0.0, "native_s": 0.0}
            for name in names:
                reference = native = 0.0
                for severity in range(1, 6):
                    reference += timed(corrupt_images, images.cpu(), name, severity, 0)
                    native += timed(_synchronised, corrupt_natively, images, name, severity, 0)
                totals["reference_s"] += reference
                totals["native_s"] += native
                per_name[name].append(reference / native)
            figure.raw.append(totals)
            figure.ratios.append(totals["reference_s"] / totals["native_s"])
    figure.notes["per_corruption_speedup"] = {
        name: round(statistics.median(ratios), 1) for name, ratios in per_name.items()
    }
    if bench.device.type == "cpu" and os.cpu_count() != 1:
        # Not the figure (a sweep's evaluator has one core): the same native calls with torch
        # on every core, against the one-thread reference times above.
        native_all_cores = sum(
            timed(corrupt_natively, images, name, severity, 0)
            for name in names
            for severity in range(1, 6)
        )
        reference_s = statistics.median(row["reference_s"] for row in figure.raw)
        figure.notes["all_cores_speedup"] = round(reference_s / native_all_cores, 1)
        figure.notes["all_cores_threads"] = torch.get_num_threads()
    return figure


def _synchronised(function: Callable[..., Tensor], *args: Any) -> Tensor:
    """Call `function` and wait for the device, so a CUDA timing covers the work itself."""
    result = function(*args)
    if result.is_cuda:
        torch.cuda.synchronize(result.device)
    return result


# --------------------------------------------------------------------------- throughputs


def throughputs(bench: Bench) -> dict[str, float]:
    """Images per second, one thread (or the GPU): clean inference, each noise, each
    corruption (severity 3) and L∞ PGD (10 steps). For context, not against a target."""
    sweep = bench.sweep({})
    model = sweep.models["normal"].to(bench.device)
    count = 200 if bench.quick else 1000
    images = sweep.images[:count].to(bench.device)
    rates: dict[str, float] = {}
    with single_thread():
        rates["clean_inference"] = count / timed(predict_all, model, images, 500)
        for name in list_perturbations(Family.NOISE):
            noise = create_perturbation(name)
            assert isinstance(noise, ImagePerturbation)
            rates[f"noise/{name}"] = count / timed(noise, images, 0.1, seed=0)
        few = images[: max(count // 5, 20)]
        for name in list_perturbations(Family.CORRUPTION):
            corruption = create_perturbation(name)
            assert isinstance(corruption, ImagePerturbation)
            corruption(few[:1], 3, seed=0)  # glass_blur compiles on its first call
            rates[f"corruption/{name}"] = len(few) / timed(lambda c=corruption: c(few, 3, seed=0))
        attack = create_perturbation("linf_pgd", steps=10)
        assert isinstance(attack, Attack)
        view = attribute_view(model, 0)
        labels = sweep.labels[: len(few), 0].to(bench.device)
        rates["linf_pgd_10_steps"] = len(few) / timed(attack, view, few, labels, [8 / 255], seed=0)
    return rates


def start_ray(bench: Bench) -> float:
    """Start (or join) Ray with the benchmark's slots; returns the start-up seconds."""
    if bench.address:
        return timed(ray.init, address=bench.address)
    cpus = os.cpu_count() or 2
    return timed(init_local_ray, num_cpus=cpus, resources={SLOT: 2})


def train_benchmark_model(work: Path, quick: bool) -> tuple[Path, RunConfig]:
    """The model every figure uses: the demo's architecture, trained briefly."""
    config = parse_config(
        {
            "name": "bench",
            "seed": 0,
            "data": {"name": "shapes", "n_train": 1024 if quick else 2048, "n_test": 10_000},
            "model": {"widths": [32, 64], "attention_hidden": 64, "head_channels": 64},
            "train": {"epochs": 1, "batch_size": 128, "device": "cpu"},
            "importance": {"n_samples": 256},
            "emphasis": {"variants": {"emphasized": "topk:k=8,alpha=2"}},
        }
    )
    run_dir = work / "bench"
    with single_thread():
        train_run(config, run_dir, show_progress=False)
    return run_dir, config


def selected(names: Sequence[str] | None) -> list[str]:
    if not names:
        return list(FIGURES)
    unknown = [name for name in names if name not in FIGURES]
    if unknown:
        raise SystemExit(f"unknown figure(s) {unknown}; valid: {', '.join(FIGURES)}")
    return list(names)


__all__ = [
    "FIGURES",
    "Bench",
    "Figure",
    "selected",
    "start_ray",
    "throughputs",
    "train_benchmark_model",
]

# The shared-trunk figures (and variant_floor, whose floor is the shared pass) register here.
from benchmarks import shared_variants  # noqa: E402, F401
