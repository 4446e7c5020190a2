"""`iamt search RUN_DIR`: the emphasis search as Ray Tune trials, one per candidate transform.

The measurement is in `robustness/search.py`; this module only places it on Ray. The driver
loads the trained model, the channel importance and the **validation** images, perturbs them
once, and hands the same objects to every trial through the object store
(`tune.with_parameters`), so a trial only classifies. Trials run in parallel with the sweep's
resources (`cluster.sweep.num_cpus` / `num_gpus`, at most `max_in_flight` at once); each is
inference on fixed inputs, so the result does not depend on the order they finish in.

Writes `search.csv` (one row per trial), `search.json` (the split, the rule, the Pareto front
and the choice) and Tune's own records under `search/`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from cluster.config import RunConfig
from cluster.sweep import threads_for
from iamt.config import config_to_yaml
from iamt.data import Split, load_split
from iamt.io import write_json, write_text
from iamt.model import AttentionNet
from iamt.progress import progress_bar
from iamt.rundir import SEARCH_COLUMNS, SEARCH_REPORT, SEARCH_TABLE, RunDirectory
from robustness.config import SearchConfig
from robustness.runner import load_trained
from robustness.search import (
    ValidationSet,
    candidate_specs,
    measure,
    search_report,
    summarize,
    validation_set,
)


def _trial(
    parameters: dict[str, Any],
    model: AttentionNet,
    importance: torch.Tensor,
    data: ValidationSet,
    search: SearchConfig,
    seed: int,
) -> None:
    """One Tune trial: measure the candidate `parameters["spec"]` and report its metrics."""
    resources = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(threads_for(resources.get("CPU", 1.0)))  # results must not depend
    device = torch.device("cuda" if resources.get("GPU", 0) > 0 else "cpu")  # on the node
    metrics = measure(
        model.to(device), importance.to(device), parameters["spec"], data.to(device), search, seed
    )
    tune.report(metrics)


class _Progress(tune.Callback):
    """A tqdm bar over the trials, instead of Tune's status tables."""

    def __init__(self, total: int, show: bool) -> None:
        self.bar = progress_bar(total=total, desc="emphasis search", unit="trial", disable=not show)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.bar.update(1)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.bar.update(1)


def run_search_on_ray(
    run_dir: Path, config: RunConfig, *, show_progress: bool = True
) -> dict[str, Any]:
    """Search on the connected Ray; returns search.json's content. Ray must be initialised."""
    started = time.perf_counter()
    specs = candidate_specs(config)  # a bad space fails here, before any work
    model, importance = load_trained(run_dir)
    val_set = load_split(config.data, Split.VAL, config.seed)  # never the test split
    data = validation_set(config, val_set, config.seed)
    trials = _run_trials(
        RunDirectory(run_dir), config, specs, model, importance, data, show_progress
    )
    table = summarize(trials, config.search)
    report = search_report(table, config.search, data, len(val_set))
    run = RunDirectory(run_dir)
    run.write_csv(SEARCH_TABLE, table)
    write_json(run / SEARCH_REPORT, report)  # no timings: the same search, the same bytes
    write_text(run.config, config_to_yaml(config))  # the search it answers
    run.update_manifest(search_seconds=round(time.perf_counter() - started, 2))
    return report


def _run_trials(
    run: RunDirectory,
    config: RunConfig,
    specs: list[str],
    model: AttentionNet,
    importance: torch.Tensor,
    data: ValidationSet,
    show_progress: bool,
) -> list[dict[str, Any]]:
    """One Tune trial per spec; each trial's spec and metrics."""
    resources = config.cluster.sweep
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            model=model,
            importance=importance,
            data=data,
            search=config.search,
            seed=config.seed,
        ),
        {"cpu": resources.num_cpus, "gpu": resources.num_gpus},
    )
    records = run.tune_records.absolute()
    shutil.rmtree(records, ignore_errors=True)  # a fresh search, not Tune's resume
    progress = _Progress(len(specs), show_progress)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our bar, not Tune's status boxes
    tuner = tune.Tuner(
        trainable,
        param_space={"spec": tune.grid_search(specs)},
        # One process serves many trials: a trial is seconds of inference, a process start more.
        tune_config=tune.TuneConfig(
            max_concurrent_trials=resources.max_in_flight, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(records), verbose=0, callbacks=[progress]
        ),
    )
    grid = tuner.fit()
    progress.bar.close()
    results = [grid[index] for index in range(len(grid))]
    failed = [result for result in results if result.error is not None]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(specs)} search trials failed, e.g. "
            f"{(failed[0].config or {}).get('spec')!r}: {failed[0].error}"
        )
    keep = [column for column in SEARCH_COLUMNS if column.endswith("_accuracy")]
    return [
        {"spec": (r.config or {})["spec"], **{key: (r.metrics or {})[key] for key in keep}}
        for r in results
    ]


def with_search_enabled(config: RunConfig) -> RunConfig:
    """`iamt search` on a run whose config did not ask for it: the sweep will then evaluate
    the chosen transform, so the stored config must say that a search belongs to the run."""
    search = config.search.model_copy(update={"enabled": True})
    return config.model_copy(update={"search": search})
