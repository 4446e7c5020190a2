"""The whole run config: the model and the method, the evaluation, and where things run.

`RunConfig` is assembled here, in the layer that sees all of its sections: the data, model,
training, importance and emphasis sections live in `iamt/config.py`, the sweep and the search
in `robustness/config.py`, and the `cluster` section (Ray Train's scaling, the evaluator tasks)
below, beside the Ray code it configures. The cluster section is placement only: it never
changes a number in results.csv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from iamt.config import (
    ConfigError,
    Section,
    apply_overrides_to,
    read_config_file,
    validate_config,
)
from iamt.rundir import FAILURES, RunDirectory
from robustness.config import EvaluationConfig


class TrainScalingConfig(Section):
    """Ray Train's ScalingConfig for `iamt run` (`iamt train` always trains in one process)."""

    num_workers: PositiveInt = Field(1, description="data-parallel (DDP) training workers")
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = Field(1, description="also each worker's torch threads")
    gpus_per_worker: PositiveFloat = Field(1, description="with use_gpu; may be fractional")
    max_failures: NonNegativeInt = Field(
        1, description="worker-group restarts, each resuming from the last epoch's checkpoint"
    )


class SweepResourcesConfig(Section):
    """How `iamt run` fans the robustness jobs out over Ray."""

    num_cpus: PositiveFloat = Field(1, description="per evaluator task; also its torch threads")
    num_gpus: float = Field(0, ge=0, description="per evaluator task; fractions share a GPU")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per task, e.g. {evaluator: 1}"
    )
    memory_mb: PositiveFloat | None = Field(
        None,
        description="per evaluator task: Ray schedules by it, and a job allocating more fails "
        f"alone (recorded in {FAILURES}, not retried); null = no cap",
    )
    max_in_flight: PositiveInt = Field(8, description="jobs outstanding at once (backpressure)")
    max_retries: NonNegativeInt = Field(2, description="resubmissions of a failed job")


class ClusterConfig(Section):
    """Where `iamt run` runs. Placement only: it never changes a number in results.csv."""

    address: str | None = Field(
        None, description="Ray cluster to join; null: $RAY_ADDRESS, else an embedded local Ray"
    )
    num_cpus: PositiveInt | None = Field(
        None, description="CPUs of the embedded local Ray; null = all of this machine's"
    )
    train: TrainScalingConfig = TrainScalingConfig()
    sweep: SweepResourcesConfig = SweepResourcesConfig()


class RunConfig(EvaluationConfig):
    """`iamt run`'s config: every section, in the order a config file lists them."""

    cluster: ClusterConfig = ClusterConfig()


# Sections a trained run may still change: they do not shape the checkpoint.
EVALUATION_SECTIONS = ("robustness", "search")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`--set a.b.c=value` overrides applied to a raw config (each key must exist)."""
    return apply_overrides_to(RunConfig, raw, overrides)


def parse_config(raw: Mapping[str, Any], source: str = "config") -> RunConfig:
    return validate_config(RunConfig, raw, source)


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> RunConfig:
    """The config file at `path` with `--set` overrides, validated: the single entry point."""
    return read_config_file(RunConfig, path, overrides)


def load_run_config(run_dir: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The config of an existing run; overrides may change only the `robustness` and `search`
    sections, since everything else produced the checkpoint already in the run directory."""
    path = RunDirectory(run_dir).config
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: {path} does not exist")
    prefixes = tuple(f"{section}." for section in EVALUATION_SECTIONS)
    outside = [item for item in overrides if not item.strip().startswith(prefixes)]
    if outside:
        raise ConfigError(
            f"--set {outside[0]!r}: only robustness.* and search.* keys can change on a "
            "trained run; train a new run for other changes"
        )
    return load_config(path, overrides)
