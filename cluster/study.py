"""`iamt study STUDY_FILE --out STUDY_DIR`: many members, one verdict that holds across seeds.

A study file names a base config and what varies:

    base: demo.yaml                 # relative to the study file
    set: {train.epochs: 4}          # applied to every member (any key)
    study:
      seeds: [0, 1, 2]
      grid: {train.mask_sparsity: [0.1, 0.5]}   # training-side keys only

Its members are grid point × seed, each a full run directory STUDY_DIR/members/<name>/ that
`run_pipeline` writes exactly as `iamt run` would for the member's config alone, so each
member's results.csv is byte-identical to that run's. Members run concurrently on one Ray
(as many as the cluster's CPUs hold trainers at once): their training and sweeps overlap on
the cluster while every driver-side step (seeding, model init, importance, the search, merging)
runs one member at a time under a lock, since they share the driver's global RNG and threads.
A rerun skips finished members; an unfinished one resumes where `iamt run` would. Then
`robustness.study` turns the members' results into study.csv, study_seeds.csv and
study_grid.csv, and `dashboards.study_report` into study.html.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import queue
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.config import RunConfig, apply_overrides, parse_config
from iamt.config import ConfigError
from iamt.io import write_csv, write_text
from iamt.progress import progress_bar
from iamt.rundir import (
    RESULTS,
    STUDY_CONFIG,
    STUDY_GRID,
    STUDY_MEMBERS,
    STUDY_SEEDS,
    STUDY_TABLE,
    RunDirectory,
    read_csv,
)

if TYPE_CHECKING:
    from robustness.study import MemberResults

# What may vary between members: what shapes the trained model. The sweep (robustness.*),
# the search and the placement (cluster.*) must be one for all, or members are not comparable.
GRID_SECTIONS = ("train", "model", "importance", "emphasis", "data")
BASE_POINT = "base"  # the grid point's label when the study has no grid


class StudySection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seeds: list[int] = Field(min_length=1, description="training seeds; each grid point's members")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description=f"keys of {', '.join(GRID_SECTIONS)} -> values"
    )


class StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="the base config, relative to the study file")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for every member")
    study: StudySection


@dataclass(frozen=True)
class Member:
    name: str
    grid_point: str  # "train.mask_sparsity=0.1", keys joined by "; ", or BASE_POINT
    seed: int
    config: RunConfig


def _value_text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _member_name(point: Mapping[str, Any], seed: int) -> str:
    """A plain directory name: each grid key's last part and value, then the seed."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{_value_text(value)}" for key, value in point.items()]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join([*parts, f"seed-{seed}"]))


def _check_grid(study: StudySection) -> None:
    duplicates = sorted({seed for seed in study.seeds if study.seeds.count(seed) > 1})
    if duplicates:
        raise ConfigError(f"study.seeds: seed(s) {duplicates} appear more than once")
    for key, values in study.grid.items():
        section = key.split(".", 1)[0]
        if section not in GRID_SECTIONS or "." not in key:
            raise ConfigError(
                f"study.grid key {key!r}: only keys of {', '.join(s + '.*' for s in GRID_SECTIONS)}"
                " may vary between members (the sweep, the search and the cluster must be the "
                "same for all to compare them); put it under `set:` to change it for every member"
            )
        if not values:
            raise ConfigError(f"study.grid.{key}: give at least one value, got []")
        texts = [_value_text(v) for v in values]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"study.grid.{key}: a value appears more than once in {values}")


def load_study(path: Path) -> tuple[StudyFile, list[Member]]:
    """The study file and every member's validated config; refuses a bad study before any work."""
    if not path.is_file():
        raise ConfigError(f"study file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
        study = StudyFile.model_validate(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'the top level'}: {e['msg']}"
            for e in error.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    _check_grid(study.study)
    base_path = (path.parent / study.base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base config {study.base!r} ({base_path}) does not exist")
    base = yaml.safe_load(base_path.read_text()) or {}
    common = [f"{key}={_value_text(value)}" for key, value in study.set.items()]
    try:
        base = apply_overrides(base, common)
    except ConfigError as error:
        raise ConfigError(f"{path}: set: {error}") from None
    members = [_member(base, point, seed, path) for point, seed in _points(study.study)]
    names = [member.name for member in members]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:  # values that differ only in characters a directory name cannot hold
        raise ConfigError(f"{path}: study.grid gives several members the name(s) {clashes}")
    return study, members


def _points(study: StudySection) -> Iterator[tuple[dict[str, Any], int]]:
    keys = list(study.grid)
    for values in itertools.product(*(study.grid[key] for key in keys)):
        for seed in study.seeds:
            yield dict(zip(keys, values, strict=True)), seed


def _member(raw: dict[str, Any], point: dict[str, Any], seed: int, path: Path) -> Member:
    name = _member_name(point, seed)
    label = "; ".join(f"{k}={_value_text(v)}" for k, v in point.items()) or BASE_POINT
    overrides = [f"{key}={_value_text(value)}" for key, value in point.items()]
    try:
        member_raw = apply_overrides(raw, [*overrides, f"seed={seed}", f"name={name}"])
        config = parse_config(member_raw, source=f"{path} member {name}")
    except ConfigError as error:
        raise ConfigError(f"{path}: study.grid {label}: {error}") from None
    return Member(name, label, seed, config)


def member_dir(study_dir: Path, member: Member) -> Path:
    return study_dir / STUDY_MEMBERS / member.name


def is_finished(run_dir: Path, config: RunConfig) -> bool:
    """The member ran to its end with this very config (a changed config runs again)."""
    run = RunDirectory(run_dir)
    if not (run_dir / RESULTS).is_file() or not run.manifest.is_file():
        return False
    manifest = json.loads(run.manifest.read_text())
    if manifest.get("status") != "done" or manifest.get("stage") != "done":
        return False
    saved = yaml.safe_load(run.config.read_text()) if run.config.is_file() else None
    return saved == config.model_dump(mode="json")


def concurrent_members(members: list[Member], cpus: float) -> int:
    """How many members' trainers fit on the cluster at once (at least one)."""
    scaling = members[0].config.cluster.train
    per_trainer = scaling.num_workers * scaling.cpus_per_worker
    return max(1, min(len(members), math.floor(cpus / per_trainer)))


class DriverLock:
    """Held by one member's driver-side steps at a time; released while it waits on Ray."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            yield

    @contextmanager
    def released(self) -> Iterator[None]:
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()


@dataclass
class StudyResult:
    study_dir: Path
    members: int
    ran: int  # members run (or resumed) now; the others were already finished
    failed_jobs: int
    report: Path


def run_study(
    study_path: Path,
    study_dir: Path,
    *,
    address: str | None = None,
    show_progress: bool = True,
) -> StudyResult:
    """Run (or resume) every member on one Ray, then write the study's tables and report."""
    import ray

    from cluster.pipeline import ray_address, start_ray, validate_run

    study, members = load_study(study_path)
    for member in members:  # every member's data, run directory and cluster asks, first
        validate_run(member.config, member_dir(study_dir, member), address, None, False)
    write_text(study_dir / STUDY_CONFIG, yaml.safe_dump(study.model_dump(mode="json")))
    pending = [m for m in members if not is_finished(member_dir(study_dir, m), m.config)]
    failed = 0
    if pending:
        owns_ray = not ray.is_initialized()
        start_ray(ray_address(address, members[0].config), members[0].config)
        try:
            failed = _run_members(pending, study_dir, ray.cluster_resources(), show_progress)
        finally:
            if owns_ray:
                ray.shutdown()
    report = write_study_outputs(study_dir, members)
    return StudyResult(study_dir, len(members), len(pending), failed, report)


def _run_members(
    pending: list[Member], study_dir: Path, resources: Mapping[str, float], show_progress: bool
) -> int:
    """Every pending member's `run_pipeline`, several at once; returns their failed jobs.

    The members run in daemon threads, so that Ctrl-C (or any fault) ends the study at once:
    the running members' manifests say so, and a rerun resumes them where they stopped."""
    from cluster.pipeline import run_pipeline

    lock = DriverLock()
    todo: queue.Queue[Member] = queue.Queue()
    for member in pending:
        todo.put(member)
    outcomes: queue.Queue[tuple[Member, int | BaseException]] = queue.Queue()
    running: set[str] = set()

    def work() -> None:
        while True:
            try:
                member = todo.get_nowait()
            except queue.Empty:
                return
            running.add(member.name)
            try:
                with lock.held():
                    result = run_pipeline(
                        member.config,
                        member_dir(study_dir, member),
                        show_progress=False,
                        waiting=lock.released,
                    )
                outcomes.put((member, int(result.jobs["failed"])))
            except BaseException as error:  # reported to the main thread, which raises it
                outcomes.put((member, error))
                return
            finally:
                running.discard(member.name)

    workers = concurrent_members(pending, float(resources.get("CPU", os.cpu_count() or 1)))
    for index in range(workers):
        threading.Thread(target=work, name=f"member-{index}", daemon=True).start()
    failed = 0
    try:
        with progress_bar(
            total=len(pending), desc="study members", unit="member", disable=not show_progress
        ) as bar:
            for _ in pending:
                member, outcome = _next_outcome(outcomes, bar, study_dir, pending)
                if isinstance(outcome, BaseException):
                    raise outcome  # a member's fault ends the study; what it finished is kept
                failed += outcome
                bar.set_postfix_str(jobs_done(study_dir, pending), refresh=False)
                bar.update(1)
    except BaseException as error:
        _mark_interrupted(study_dir, [m for m in pending if m.name in running], error)
        raise
    return failed


def _next_outcome(
    outcomes: queue.Queue[tuple[Member, int | BaseException]],
    bar: Any,
    study_dir: Path,
    pending: list[Member],
) -> tuple[Member, int | BaseException]:
    """The next member to end, showing the members' sweep jobs done every 2 s meanwhile."""
    while True:
        try:
            return outcomes.get(timeout=2.0)
        except queue.Empty:
            bar.set_postfix_str(jobs_done(study_dir, pending))


def jobs_done(study_dir: Path, members: list[Member]) -> str:
    """ "jobs D/T": the sweep jobs done of those the members' manifests know of so far."""
    done = total = 0
    for member in members:
        manifest = RunDirectory(member_dir(study_dir, member)).manifest
        try:
            jobs = json.loads(manifest.read_text()).get("jobs") or {}
        except (OSError, ValueError):  # not written yet
            continue
        done, total = done + int(jobs.get("done", 0)), total + int(jobs.get("total", 0))
    return f"jobs {done}/{total}"


def _mark_interrupted(study_dir: Path, members: list[Member], error: BaseException) -> None:
    """The manifests of members still running when the study stopped: failed, with why."""
    for member in members:
        run = RunDirectory(member_dir(study_dir, member))
        if run.manifest.is_file():
            run.update_manifest(status="failed", error=f"study stopped: {type(error).__name__}")


def _member_results(study_dir: Path, member: Member) -> MemberResults:
    """The member's per-sample outcomes (its part rows) of the jobs its results.csv holds."""
    from robustness.results import read_parts
    from robustness.study import MemberResults

    run_dir = member_dir(study_dir, member)
    job_ids = set(read_csv(run_dir / RESULTS)["job_id"])
    return MemberResults(member.name, member.grid_point, member.seed, read_parts(run_dir, job_ids))


def write_study_outputs(study_dir: Path, members: list[Member]) -> Path:
    """study.csv, study_seeds.csv, study_grid.csv and study.html from the members' results."""
    from robustness.study import study_tables

    tables = study_tables([_member_results(study_dir, member) for member in members])
    write_csv(study_dir / STUDY_TABLE, tables.study)
    write_csv(study_dir / STUDY_SEEDS, tables.seeds)
    write_csv(study_dir / STUDY_GRID, tables.grid)
    from dashboards.study_report import write_study_report

    return write_study_report(study_dir)
