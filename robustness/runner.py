"""The stages of a run in one process: training with clean accuracy, and the robustness sweep.

`train_run` trains and ranks (`iamt.workflow.train_and_rank`) and measures every variant's
clean accuracy (`clean.csv`). `prepare_sweep` loads what every job needs (the checkpoint, its
variants, the evaluation split) and expands the config into jobs; `run_sweep_locally` runs the
unfinished ones with a progress bar; `finish_sweep` merges the parts into `results.csv` and
`summary.csv`. The Ray fan-out (cluster/sweep.py) reuses `prepare_sweep` and `finish_sweep`
and replaces only the loop in between.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from torch import Tensor, nn

from iamt.checkpoint import load_checkpoint
from iamt.config import config_to_yaml
from iamt.data import Split, as_tensors, load_split
from iamt.importance import importance_from_table
from iamt.io import write_text
from iamt.model import AttentionNet
from iamt.progress import progress_bar
from iamt.rundir import CLEAN, DRIFT, IMPORTANCE, RESULTS, SUMMARY, RunDirectory
from iamt.variants import parse_variants, variant_models
from iamt.vocabulary import NORMAL, Family
from iamt.workflow import Fit, RunDirectoryError, TrainInputs, now, train_and_rank
from robustness.clean import clean_accuracy
from robustness.config import EvaluationConfig
from robustness.front import attacked_variants, remeasure_on_test
from robustness.gradients import gradient_statistics
from robustness.jobs import Job, expand_sweep, run_job
from robustness.results import (
    drift_table,
    failure_record,
    finished_job_ids,
    merge_results,
    quarantine_corrupt_parts,
    read_parts,
    summarize,
    write_failures,
    write_part,
    write_timings,
)
from robustness.search import searched_variants


@dataclass
class TrainRunSummary:
    run_dir: Path
    trained: bool
    clean: pd.DataFrame
    localisation: dict[str, float]


def train_run(
    config: EvaluationConfig,
    run_dir: Path,
    *,
    force: bool = False,
    show_progress: bool = True,
    fit: Fit | None = None,
    trainer: str = "single process",
    retrain: bool | None = None,
    inputs: TrainInputs | None = None,
) -> TrainRunSummary:
    """`iamt train` and the training stage of `iamt run`: train and rank
    (`iamt.workflow.train_and_rank`, whose arguments these are), then the clean accuracy of
    every variant on the test split."""
    trained = train_and_rank(
        config,
        run_dir,
        force=force,
        show_progress=show_progress,
        fit=fit,
        trainer=trainer,
        retrain=retrain,
        inputs=inputs,
    )
    run, manifest = RunDirectory(run_dir), trained.manifest
    manifest["stage"] = "clean"
    run.write_manifest(manifest)
    tick = time.perf_counter()
    variants, test_set = trained.inputs.variants, trained.inputs.test_set
    clean = clean_accuracy(config, trained.model, variants, trained.importance, test_set)
    run.write_csv(CLEAN, clean)
    timings = {**trained.timings, "clean_s": time.perf_counter() - tick}
    timings["total_s"] = timings["train_and_rank_s"] + timings["clean_s"]
    manifest.update(
        status="done",
        stage="done",
        finished=now(),
        timings=timings,
        clean_accuracy={f"{r.variant}/{r.attribute}": r.accuracy for r in clean.itertuples()},
        localisation_ratio=trained.localisation,
    )
    run.write_manifest(manifest)
    return TrainRunSummary(run_dir, trained.trained, clean, trained.localisation)


@dataclass
class Sweep:
    run_dir: Path
    config: EvaluationConfig
    models: dict[str, nn.Module]
    transforms: dict[str, str]
    images: Tensor  # (N, 3, H, W) the evaluation split
    labels: Tensor  # (N, A)
    jobs: list[Job]
    failures: list[dict[str, Any]] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)  # damaged parts moved aside

    @property
    def pending(self) -> list[Job]:
        done = finished_job_ids(self.run_dir)
        return [job for job in self.jobs if job.job_id not in done]


def load_trained(run_dir: Path) -> tuple[AttentionNet, Tensor]:
    """The normal model from the checkpoint and its channel importance (A, C)."""
    run = RunDirectory(run_dir)
    model, _ = load_checkpoint(run.checkpoint_stem)
    importance_path = run / IMPORTANCE
    if not importance_path.is_file():
        raise RunDirectoryError(f"{importance_path} is missing: run `iamt train` first")
    importance = importance_from_table(
        pd.read_csv(importance_path), model.architecture.attribute_names
    )
    return model, importance


def load_variants(
    run_dir: Path, config: EvaluationConfig
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The normal model from the checkpoint, every configured emphasized view of it, and the
    transform the emphasis search chose (`search.json`), when the config asks for a search."""
    model, importance = load_trained(run_dir)
    transforms = parse_variants(config, extra=searched_variants(run_dir, config))
    models = variant_models(model, transforms, importance)
    return models, {name: transform.spec() for name, transform in transforms.items()}


def prepare_sweep(run_dir: Path, config: EvaluationConfig) -> Sweep:
    run = RunDirectory(run_dir)
    if not run.has_checkpoint():
        raise RunDirectoryError(
            f"{run_dir} holds no trained model ({run.checkpoint_stem}.json); run `iamt train` first"
        )
    models, transforms = load_variants(run_dir, config)
    robustness = config.robustness
    largest = max(
        [robustness.noise.n_samples, robustness.corruptions.n_samples, robustness.attacks.n_samples]
        + [m.n_samples or 0 for m in robustness.attacks.methods]
    )
    dataset = load_split(config.data, Split(robustness.split), config.seed)
    images, labels = as_tensors(dataset, largest)
    attribute_names = [spec.name for spec in dataset.attributes]
    jobs = expand_sweep(
        robustness,
        variants=list(models),
        attribute_names=attribute_names,
        n_available=len(images),
        run_seed=config.seed,
        attack_variants=attacked_variants(models),
    )
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise AssertionError("two jobs of one sweep share a job_id")
    # A damaged part would otherwise count as done forever: move it aside and rerun its job.
    quarantined = quarantine_corrupt_parts(
        run_dir, {job.job_id: job.variants for job in jobs}, attribute_names
    )
    for item in quarantined:
        warnings.warn(
            f"part file of job {item['job_id']} is damaged ({item['problem']}); moved to "
            f"{item['moved_to']} and the job will run again",
            stacklevel=2,
        )
    return Sweep(run_dir, config, models, transforms, images, labels, jobs, quarantined=quarantined)


def timed_run(job: Job, sweep: Sweep) -> tuple[list[dict[str, Any]], float]:
    start = time.perf_counter()
    rows = run_job(
        job,
        sweep.models,
        sweep.images,
        sweep.labels,
        drift_samples=sweep.config.robustness.drift_samples,
    )
    return rows, time.perf_counter() - start


def run_sweep_locally(
    sweep: Sweep,
    *,
    show_progress: bool = True,
    on_update: Callable[[int, int, int], None] | None = None,
) -> None:
    """Run every pending job in this process. A job that raises is recorded, not fatal."""
    pending = sweep.pending
    total = len(sweep.jobs)
    done = total - len(pending)
    with progress_bar(
        total=total, initial=done, desc="sweep", unit="job", disable=not show_progress
    ) as bar:
        for job in pending:
            bar.set_postfix_str(f"{job.describe()} failed={len(sweep.failures)}")
            try:
                rows, wall = timed_run(job, sweep)
            except Exception as error:  # any job error is recorded; the sweep goes on
                sweep.failures.append(failure_record(job, error, attempts=1))
            else:
                write_part(sweep.run_dir, rows)
                sweep.timings.append(
                    {
                        "job_id": job.job_id,
                        "node": socket.gethostname(),
                        "worker": f"pid-{os.getpid()}",
                        "attempts": 1,
                        "wall_s": round(wall, 3),
                    }
                )
                done += 1
            bar.update(1)
            if on_update is not None:
                on_update(done, len(sweep.failures), total)


def finish_sweep(sweep: Sweep) -> dict[str, Any]:
    """Merge parts into results.csv, aggregate summary.csv and drift.csv, write failures and
    timings."""
    run_dir, config = sweep.run_dir, sweep.config
    wanted = {job.job_id for job in sweep.jobs}
    finished = finished_job_ids(run_dir) & wanted
    parts = read_parts(run_dir, finished)
    results = merge_results(
        parts, run=config.name, dataset=config.data.name.value, transforms=sweep.transforms
    )
    run = RunDirectory(run_dir)
    run.write_csv(RESULTS, results)
    if config.search.enabled:
        remeasure_on_test(run_dir, results)  # does the search's front hold on test?
    summary = summarize(
        parts, transforms=sweep.transforms, seed=config.seed, gradients=_gradients(sweep)
    )
    run.write_csv(SUMMARY, summary)
    run.write_csv(DRIFT, drift_table(parts))
    write_failures(run_dir, sweep.failures)
    write_timings(run_dir, sweep.timings)
    return {"total": len(sweep.jobs), "done": len(finished), "failed": len(sweep.failures)}


def _gradients(sweep: Sweep) -> pd.DataFrame | None:
    """The gradient-masking statistics on the attacks' first test images, when the sweep attacks
    (None otherwise: nothing to flag)."""
    if not any(job.family is Family.ADVERSARIAL for job in sweep.jobs):
        return None
    robustness = sweep.config.robustness
    normal = sweep.models[NORMAL]
    assert isinstance(normal, AttentionNet)  # the checkpoint's own model, not a view of it
    n = min(robustness.attacks.n_samples, len(sweep.images))
    return gradient_statistics(
        {variant: sweep.models[variant] for variant in attacked_variants(sweep.models)},
        sweep.images[:n],
        sweep.labels[:n],
        list(normal.architecture.attribute_names),
        robustness.batch_size,
    )


class SweepRunner(Protocol):
    """Runs a prepared sweep's pending jobs: `run_sweep_locally`, or the Ray fan-out
    (`cluster.sweep.run_sweep_on_ray`) for `iamt run`."""

    def __call__(
        self,
        sweep: Sweep,
        *,
        show_progress: bool = True,
        on_update: Callable[[int, int, int], None] | None = None,
    ) -> Any: ...


def evaluate_run(
    run_dir: Path,
    config: EvaluationConfig,
    *,
    show_progress: bool = True,
    run_sweep: SweepRunner = run_sweep_locally,
) -> Mapping[str, Any]:
    """`iamt evaluate` (one process, no Ray) and the sweep stage of `iamt run` (`run_sweep`)."""
    sweep = prepare_sweep(run_dir, config)
    run = RunDirectory(run_dir)
    write_text(run.config, config_to_yaml(config))
    started = time.perf_counter()

    def progress(done: int, failed: int, total: int) -> None:
        run.update_manifest(
            status="running",
            stage="sweep",
            jobs={"total": total, "done": done, "failed": failed},
        )

    if sweep.quarantined:
        run.update_manifest(quarantined_parts=sweep.quarantined)
    progress(len(sweep.jobs) - len(sweep.pending), 0, len(sweep.jobs))
    torch.set_grad_enabled(True)  # attacks need gradients
    run_sweep(sweep, show_progress=show_progress, on_update=progress)
    counts = finish_sweep(sweep)
    status = "done" if counts["failed"] == 0 else "failed"
    run.update_manifest(
        status=status,
        stage="done",
        jobs=counts,
        sweep_seconds=round(time.perf_counter() - started, 2),
        precision=config.robustness.precision.value,
    )
    return counts
