"""The sweep fanned out over a real embedded Ray (2 CPUs, loopback): same results as one process,
failures recorded, resume, backpressure. One Ray instance serves the whole module."""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
import ray

from cluster.config import RunConfig, parse_config
from cluster.sweep import init_local_ray, run_sweep_on_ray
from iamt.rundir import RunDirectory
from robustness.perturbations import Family
from robustness.runner import Sweep, TrainRunSummary, finish_sweep, prepare_sweep
from tests.conftest import SMALL_SWEEP, TINY


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    init_local_ray(num_cpus=2)
    yield
    ray.shutdown()


def _config() -> RunConfig:
    return parse_config({**TINY, "robustness": SMALL_SWEEP})


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _ray_run(run_dir: Path, **options: int) -> tuple[Sweep, dict[str, int]]:
    sweep = prepare_sweep(run_dir, _config())
    run_sweep_on_ray(sweep, show_progress=False, **options)
    return sweep, finish_sweep(sweep)


@pytest.fixture(scope="module")
def ray_run_dir(tiny_run: TrainRunSummary, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole SMALL_SWEEP on Ray, from a freshly trained run with no parts. Read-only."""
    run_dir = _copy(tiny_run.run_dir, tmp_path_factory.mktemp("ray") / "tiny")
    _, counts = _ray_run(run_dir)
    assert counts["failed"] == 0 and counts["done"] == counts["total"]
    return run_dir


def test_ray_sweep_matches_the_single_process_sweep_byte_for_byte(
    ray_run_dir: Path, evaluated_run_dir: Path
) -> None:
    for name in ["results.csv", "summary.csv", "drift.csv"]:
        assert (ray_run_dir / name).read_bytes() == (evaluated_run_dir / name).read_bytes(), name
    timings = pd.read_csv(ray_run_dir / "timings.csv")
    assert len(timings) == len(pd.read_csv(ray_run_dir / "results.csv")["job_id"].unique())
    assert (timings["attempts"] == 1).all() and (timings["wall_s"] >= 0).all()
    assert timings["worker"].str.startswith("pid-").all()
    assert pd.read_csv(ray_run_dir / "failures.csv").empty


def _drop_parts(run_dir: Path, sweep: Sweep, family: Family, count: int) -> list[str]:
    """Delete `count` part files of one family; returns their job ids."""
    ids = [job.job_id for job in sweep.jobs if job.family is family][:count]
    assert len(ids) == count
    for job_id in ids:
        RunDirectory(run_dir).part(job_id).unlink()
    return ids


def test_a_job_that_always_fails_is_retried_recorded_and_the_sweep_goes_on(
    evaluated_run_dir: Path, tmp_path: Path
) -> None:
    run_dir = _copy(evaluated_run_dir, tmp_path / "run")
    sweep = prepare_sweep(run_dir, _config())
    missing = _drop_parts(run_dir, sweep, Family.NOISE, 3)
    noise = next(job for job in sweep.jobs if job.family is Family.NOISE)
    bogus = dataclasses.replace(noise, perturbation="no_such_noise")
    sweep.jobs.append(bogus)

    stats = run_sweep_on_ray(sweep, max_retries=1, show_progress=False)
    counts = finish_sweep(sweep)

    assert (stats.finished, stats.failed, stats.retried) == (3, 1, 1)
    assert counts == {"total": len(sweep.jobs), "done": len(sweep.jobs) - 1, "failed": 1}
    failures = pd.read_csv(run_dir / "failures.csv")
    assert failures["job_id"].tolist() == [bogus.job_id]
    assert failures["attempts"].tolist() == [2]
    error = failures["error"].iloc[0]
    assert error.startswith("PerturbationError:") and "no_such_noise" in error
    results = pd.read_csv(run_dir / "results.csv")
    assert set(results["job_id"]) == {job.job_id for job in sweep.jobs} - {bogus.job_id}
    assert set(missing) <= set(results["job_id"])
    # The recomputed jobs give the rows the single-process run gave.
    assert (run_dir / "results.csv").read_bytes() == (
        evaluated_run_dir / "results.csv"
    ).read_bytes()


def test_a_rerun_recomputes_only_the_missing_parts(ray_run_dir: Path, tmp_path: Path) -> None:
    run_dir = _copy(ray_run_dir, tmp_path / "run")
    sweep = prepare_sweep(run_dir, _config())
    dropped = _drop_parts(run_dir, sweep, Family.CORRUPTION, 2)
    kept = {
        job.job_id: RunDirectory(run_dir).part(job.job_id).stat().st_mtime_ns
        for job in sweep.jobs
        if job.job_id not in dropped
    }
    assert {job.job_id for job in sweep.pending} == set(dropped)

    stats = run_sweep_on_ray(sweep, show_progress=False)
    finish_sweep(sweep)

    assert (stats.submitted, stats.finished) == (2, 2)
    assert {record["job_id"] for record in sweep.timings} == set(dropped)
    for job_id, mtime in kept.items():
        assert RunDirectory(run_dir).part(job_id).stat().st_mtime_ns == mtime, job_id
    assert (run_dir / "results.csv").read_bytes() == (ray_run_dir / "results.csv").read_bytes()
    # timings.csv keeps the first run's records for the jobs not rerun.
    assert len(pd.read_csv(run_dir / "timings.csv")) == len(sweep.jobs)


def test_never_more_than_max_in_flight_tasks_are_outstanding(
    evaluated_run_dir: Path, tmp_path: Path
) -> None:
    run_dir = _copy(evaluated_run_dir, tmp_path / "run")
    sweep = prepare_sweep(run_dir, _config())
    dropped = _drop_parts(run_dir, sweep, Family.NOISE, 6) + _drop_parts(
        run_dir, sweep, Family.CLEAN, 2
    )
    updates: list[tuple[int, int, int]] = []

    stats = run_sweep_on_ray(
        sweep, max_in_flight=2, show_progress=False, on_update=lambda *u: updates.append(u)
    )

    assert stats.max_in_flight_seen == 2  # the bound was reached and held
    assert (stats.submitted, stats.finished, stats.failed) == (len(dropped), len(dropped), 0)
    total = len(sweep.jobs)
    assert [done for done, _, _ in updates] == list(range(total - len(dropped) + 1, total + 1))
    assert not sweep.pending


def test_bad_arguments_are_refused_before_any_work(tiny_run: TrainRunSummary) -> None:
    sweep = prepare_sweep(tiny_run.run_dir, _config())
    with pytest.raises(ValueError, match="max_in_flight"):
        run_sweep_on_ray(sweep, max_in_flight=0)
    with pytest.raises(ValueError, match="max_retries"):
        run_sweep_on_ray(sweep, max_retries=-1)


def test_the_embedded_ray_runs_on_loopback_and_init_is_idempotent() -> None:
    init_local_ray(num_cpus=2)  # already running: a no-op, not a second instance
    nodes = [node for node in ray.nodes() if node["Alive"]]
    assert [node["NodeManagerAddress"] for node in nodes] == ["127.0.0.1"]
    assert ray.cluster_resources()["CPU"] == 2


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def test_the_embedded_ray_listens_on_loopback_only(ray_run_dir: Path) -> None:
    """Every listening socket of this driver and of the Ray processes it started (GCS, raylet,
    object manager, workers) is on 127.0.0.1: nothing of an embedded sweep is reachable from
    the network (DESIGN §7)."""
    del ray_run_dir  # the sweep has run: its workers exist too
    driver = psutil.Process()
    listening = [
        (process.pid, process.name(), connection.laddr)
        for process in [driver, *driver.children(recursive=True)]
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= 3, listening  # GCS, raylet, object manager at least
    exposed = [entry for entry in listening if not _is_loopback(entry[2].ip)]
    assert not exposed, exposed


def test_a_job_over_its_memory_cap_fails_alone_and_is_not_retried(
    tiny_run: TrainRunSummary, tmp_path: Path
) -> None:
    """Clean and noise jobs over 4,000 images at batch 4,000 need hundreds of MB; FGSM on 16
    images needs a few. With a 100 MB cap the big ones fail, by name, the rest complete."""
    run_dir = _copy(tiny_run.run_dir, tmp_path / "run")
    raw = {**TINY, "data": {**TINY["data"], "n_test": 4000}}
    raw["robustness"] = {
        "shard_size": 4000,
        "batch_size": 4000,
        "noise": {"types": ["gaussian"], "strengths": [0.1], "n_samples": 4000},
        "corruptions": {"names": [], "severities": [1], "n_samples": 1},
        "attacks": {"linf_epsilons": [0.03], "n_samples": 16, "methods": [{"name": "fgsm"}]},
    }
    sweep = prepare_sweep(run_dir, parse_config(raw))

    stats = run_sweep_on_ray(sweep, max_retries=2, memory_mb_per_task=100, show_progress=False)
    counts = finish_sweep(sweep)

    big = {job.job_id for job in sweep.jobs if job.family in (Family.CLEAN, Family.NOISE)}
    small = {job.job_id for job in sweep.jobs} - big
    failures = pd.read_csv(run_dir / "failures.csv")
    assert set(failures["job_id"]) == big and small
    assert failures["error"].str.contains("JobMemoryError").all()
    assert failures["error"].str.contains("memory cap of 100 MB").all()
    assert (failures["attempts"] == 1).all() and stats.retried == 0  # it would fail again
    assert {p.stem for p in (run_dir / "parts").glob("*.csv")} == small
    assert counts == {"total": len(sweep.jobs), "done": len(small), "failed": len(big)}

    # The same workers serve uncapped jobs afterwards: the cap was lifted after each job.
    shutil.rmtree(run_dir / "parts")
    sweep = prepare_sweep(run_dir, parse_config(raw))
    run_sweep_on_ray(sweep, show_progress=False)
    assert not sweep.failures and not sweep.pending


@pytest.mark.e2e
def test_load_10000_tiny_jobs_bounded_exactly_once_and_flat_driver_memory(
    tiny_run: TrainRunSummary, tmp_path: Path
) -> None:
    jobs, bound = 10_000, 32
    run_dir = _copy(tiny_run.run_dir, tmp_path / "run")
    raw = {**TINY, "data": {**TINY["data"], "n_test": jobs}}
    raw["robustness"] = {  # one clean job per image
        "shard_size": 1,
        "batch_size": 1,
        "noise": {"types": [], "strengths": [0.1], "n_samples": jobs},
        "corruptions": {"names": [], "severities": [1], "n_samples": 1},
        "attacks": {"methods": [], "n_samples": 1},
    }
    sweep = prepare_sweep(run_dir, parse_config(raw))
    sweep.jobs = [job for job in sweep.jobs if job.family is Family.CLEAN]
    assert len(sweep.jobs) == jobs
    driver = psutil.Process()
    start_rss, peak_rss = driver.memory_info().rss, 0

    def sample(done: int, failed: int, total: int) -> None:
        nonlocal peak_rss
        peak_rss = max(peak_rss, driver.memory_info().rss)

    stats = run_sweep_on_ray(
        sweep, max_in_flight=bound, max_retries=0, show_progress=False, on_update=sample
    )
    counts = finish_sweep(sweep)

    assert stats.max_in_flight_seen == bound  # reached, never exceeded
    assert (stats.submitted, stats.finished, stats.failed) == (jobs, jobs, 0)
    assert counts == {"total": jobs, "done": jobs, "failed": 0}
    results = pd.read_csv(run_dir / "results.csv")
    rows = results.groupby("job_id").size()
    assert set(rows.index) == {job.job_id for job in sweep.jobs}  # every job present...
    assert (rows == 2 * 4).all()  # ...exactly once: 2 variants × 4 attributes each
    assert sorted(job.shard_start for job in sweep.jobs) == list(range(jobs))  # each image once
    growth_mb = (peak_rss - start_rss) / 2**20
    assert growth_mb < 300, f"driver RSS grew {growth_mb:.0f} MB over the sweep"
