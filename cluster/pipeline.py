"""`iamt run CONFIG`: the main job, on Ray, from a config to a report.

    1. validate the config and the run directory (nothing is written before this passes);
    2. start an embedded local Ray on 127.0.0.1, or join a cluster (`--address`,
       `cluster.address` or $RAY_ADDRESS, which `ray job submit` sets);
    3. train with Ray Train, skipped when the run already holds a checkpoint (or adopt the one
       given with `--checkpoint`), then channel importance and the emphasized variants;
    4. when `search.enabled`: the emphasis search as Ray Tune trials on the validation split
       (`cluster/search.py`), skipped when the run already holds this search's result;
    5. the robustness sweep fanned out over Ray (resuming: finished jobs are skipped), with the
       searched transform as one more variant;
    6. merge into results.csv and summary.csv, then the static report.

`manifest.json` says where it is (`stage`), how far the sweep got (`jobs`) and how it ended
(`status`: running, done, or failed with the `error`), so the dashboard can follow a run live.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ray
import torch

from cluster.config import RunConfig
from cluster.search import run_search_on_ray
from cluster.sweep import check_reachable, connect, init_local_ray, run_sweep_on_ray
from cluster.train import fit_on_ray
from dashboards.report import write_report
from iamt.config import ConfigError
from iamt.data import AttributeDataset
from iamt.model import AttentionNet
from iamt.rundir import RunDirectory
from iamt.train import EpochRecord
from iamt.workflow import TrainInputs, adopt_checkpoint, prepare_train_run
from robustness.runner import TrainRunSummary, evaluate_run, train_run
from robustness.search import candidate_specs, search_is_current


@dataclass
class PipelineResult:
    run_dir: Path
    trained: bool  # False when the checkpoint was already there (or adopted)
    jobs: dict[str, Any]  # total, done, failed
    report: Path | None
    seconds: float


def ray_address(cli_address: str | None, config: RunConfig) -> str | None:
    """The cluster to join, or None for an embedded local Ray. The command line wins, then
    the config, then $RAY_ADDRESS (set by `ray job submit` inside a job)."""
    return cli_address or config.cluster.address or os.environ.get("RAY_ADDRESS") or None


def start_ray(address: str | None, config: RunConfig) -> str:
    """Join `address`, or start the embedded local Ray; returns which, for the manifest."""
    if address:
        connect(address)
        return f"cluster at {address}"
    init_local_ray(num_cpus=config.cluster.num_cpus)
    return "embedded local Ray (127.0.0.1)"


def embedded_resources(config: RunConfig) -> dict[str, float]:
    """What `init_local_ray` will have: this machine's CPUs (or cluster.num_cpus) and GPUs."""
    return {
        "CPU": float(config.cluster.num_cpus or os.cpu_count() or 1),
        "GPU": float(torch.cuda.device_count()),
    }


def check_resources_fit(config: RunConfig, available: dict[str, float]) -> list[str]:
    """What the config asks of one Ray task or training worker group that `available` (the
    cluster's total resources) cannot give: such work would wait forever, not fail."""
    train, sweep = config.cluster.train, config.cluster.sweep
    asks = {
        "cluster.train (num_workers × cpus_per_worker CPUs)": (
            "CPU",
            train.num_workers * train.cpus_per_worker,
        ),
        "cluster.sweep.num_cpus": ("CPU", sweep.num_cpus),
        "cluster.sweep.num_gpus": ("GPU", sweep.num_gpus),
    }
    if train.use_gpu:
        asks["cluster.train (num_workers × gpus_per_worker GPUs)"] = (
            "GPU",
            train.num_workers * train.gpus_per_worker,
        )
    for name, amount in sweep.resources.items():
        asks[f"cluster.sweep.resources.{name}"] = (name, amount)
    return [
        f"{key} asks for {amount:g} {resource}, the cluster has {available.get(resource, 0):g}"
        for key, (resource, amount) in asks.items()
        if amount > available.get(resource, 0)
    ]


def run_pipeline(
    config: RunConfig,
    run_dir: Path,
    *,
    address: str | None = None,
    checkpoint: Path | None = None,
    force: bool = False,
    report: bool = True,
    show_progress: bool = True,
    waiting: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> PipelineResult:
    """`iamt run` (see the module docstring). `waiting` is entered around the stages that only
    wait on Ray (the training, the sweep): `iamt study` releases its driver lock there, so that
    other members train and sweep meanwhile; every driver-side step runs alone."""
    started = time.perf_counter()
    inputs, joining = validate_run(config, run_dir, address, checkpoint, force)
    owns_ray = not ray.is_initialized()  # a caller's Ray (tests, notebooks) stays up
    where = start_ray(joining, config)
    run = RunDirectory(run_dir)
    try:
        if joining:  # a real cluster may autoscale: say what it lacks, then wait
            for problem in check_resources_fit(config, ray.cluster_resources()):
                warnings.warn(f"{problem}; waiting for the cluster to grow", stacklevel=2)
        summary = _train(config, run_dir, inputs, checkpoint, force, show_progress, waiting)
        if config.search.enabled and not search_is_current(run_dir, config):
            run.update_manifest(status="running", stage="search", ray=where, error=None)
            run_search_on_ray(run_dir, config, show_progress=show_progress)
        run.update_manifest(status="running", stage="sweep", ray=where, error=None)
        counts = _sweep(config, run_dir, show_progress, waiting)
        report_path = None
        if report:
            run.update_manifest(stage="report")
            report_path = write_report(run_dir)
            run.update_manifest(stage="done")
    except BaseException as error:  # Ctrl-C included: the manifest must not say "running"
        if run.manifest.is_file():
            run.update_manifest(status="failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        if owns_ray:
            ray.shutdown()
    seconds = round(time.perf_counter() - started, 2)
    return PipelineResult(run_dir, summary.trained, dict(counts), report_path, seconds)


def validate_run(
    config: RunConfig, run_dir: Path, address: str | None, checkpoint: Path | None, force: bool
) -> tuple[TrainInputs, str | None]:
    """Everything cheap, checked before Ray starts or a file is written: the config, the run
    directory, the data, the search space and the cluster. Returns the loaded inputs and the
    cluster to join (None: an embedded Ray)."""
    inputs = prepare_train_run(config, run_dir, force=force)
    if config.search.enabled:
        candidate_specs(config)  # the search space, against the model's channels
    joining = ray_address(address, config)
    if joining:
        check_reachable(joining)  # seconds, not minutes of Ray's retries
    else:  # an embedded Ray never grows: what does not fit would wait forever
        too_big = check_resources_fit(config, embedded_resources(config))
        if too_big:
            raise ConfigError("; ".join(too_big) + " (lower the asks or set cluster.num_cpus)")
    if checkpoint is not None:
        adopt_checkpoint(checkpoint, run_dir, config, force=force)
    return inputs, joining


def _train(
    config: RunConfig,
    run_dir: Path,
    inputs: TrainInputs,
    checkpoint: Path | None,
    force: bool,
    show_progress: bool,
    waiting: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> TrainRunSummary:
    """Training on Ray Train (skipped when the run holds this config's checkpoint)."""
    scaling = config.cluster.train
    trainer = f"Ray Train, {scaling.num_workers} worker(s)" + (", GPU" if scaling.use_gpu else "")
    on_ray = fit_on_ray(config, run_dir, restart=force, show_progress=show_progress)

    def fit(model: AttentionNet, train_set: AttributeDataset) -> list[EpochRecord]:
        with waiting():
            return on_ray(model, train_set)

    return train_run(
        config,
        run_dir,
        force=force,
        retrain=force and checkpoint is None,
        show_progress=show_progress,
        fit=fit,
        trainer=trainer,
        inputs=inputs,
    )


def _sweep(
    config: RunConfig,
    run_dir: Path,
    show_progress: bool,
    waiting: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Mapping[str, Any]:
    """The sweep fanned out over Ray with the cluster section's resources."""
    sweep = config.cluster.sweep
    fan_out = partial(
        run_sweep_on_ray,
        max_in_flight=sweep.max_in_flight,
        max_retries=sweep.max_retries,
        num_cpus_per_task=sweep.num_cpus,
        num_gpus_per_task=sweep.num_gpus,
        resources_per_task=sweep.resources,
        memory_mb_per_task=sweep.memory_mb,
    )

    def run_sweep(*args: Any, **kwargs: Any) -> Any:
        with waiting():
            return fan_out(*args, **kwargs)

    return evaluate_run(run_dir, config, show_progress=show_progress, run_sweep=run_sweep)


def search_run(
    config: RunConfig, run_dir: Path, *, address: str | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """`iamt search RUN_DIR`: the emphasis search alone, on a trained run; the next sweep
    (`iamt run`, `iamt evaluate`) adds the chosen transform as a variant."""
    candidate_specs(config)  # a bad search space fails before Ray starts
    joining = ray_address(address, config)
    if joining:
        check_reachable(joining)
    owns_ray = not ray.is_initialized()
    start_ray(joining, config)
    try:
        return run_search_on_ray(run_dir, config, show_progress=show_progress)
    finally:
        if owns_ray:
            ray.shutdown()
