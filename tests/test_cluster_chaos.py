"""The sweep on a simulated multi-node cluster (`ray.cluster_utils.Cluster`: a head with no CPUs
and two worker nodes declaring a custom `evaluator` resource), fault-free and under faults.

Every case must end with the `results.csv` of a single-process `iamt evaluate` of the same
config, byte for byte: no missing rows, no duplicates, and no number that depends on where, or
on which attempt, a job ran.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from cluster.config import parse_config
from cluster.sweep import LOOPBACK, RaySweepStats, keep_ray_on_loopback, run_sweep_on_ray
from robustness.runner import TrainRunSummary, finish_sweep, prepare_sweep
from tests.conftest import SMALL_SWEEP, TINY

pytestmark = pytest.mark.e2e

EVALUATOR = {"evaluator": 1.0}  # only the worker nodes have it: jobs never run on the head


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    keep_ray_on_loopback()  # every simulated node on 127.0.0.1 (DESIGN §7)
    simulated = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": LOOPBACK, "include_dashboard": False},
    )
    for _ in range(2):
        simulated.add_node(num_cpus=1, resources={"evaluator": 2}, node_ip_address=LOOPBACK)
    ray.init(address=simulated.address)
    yield simulated
    ray.shutdown()
    simulated.shutdown()


def _fresh_run(tiny_run: TrainRunSummary, target: Path) -> Path:
    shutil.copytree(tiny_run.run_dir, target)
    return target


def _sweep_on_cluster(
    run_dir: Path, on_update: Callable[[int, int, int], None] | None = None
) -> RaySweepStats:
    sweep = prepare_sweep(run_dir, parse_config({**TINY, "robustness": SMALL_SWEEP}))
    stats = run_sweep_on_ray(
        sweep,
        max_in_flight=4,
        max_retries=3,
        resources_per_task=EVALUATOR,
        show_progress=False,
        on_update=on_update,
    )
    counts = finish_sweep(sweep)
    assert counts["failed"] == 0 and counts["done"] == counts["total"], counts
    return stats


def _assert_same_results(run_dir: Path, reference: Path) -> None:
    for name in ["results.csv", "summary.csv"]:
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    timings = pd.read_csv(run_dir / "timings.csv")
    assert timings["job_id"].is_unique
    assert set(timings["job_id"]) == set(pd.read_csv(run_dir / "results.csv")["job_id"])


def test_jobs_spread_over_both_worker_nodes_and_match_one_process(
    cluster: Cluster, tiny_run: TrainRunSummary, evaluated_run_dir: Path, tmp_path: Path
) -> None:
    run_dir = _fresh_run(tiny_run, tmp_path / "run")
    stats = _sweep_on_cluster(run_dir)
    assert stats.retried == 0
    _assert_same_results(run_dir, evaluated_run_dir)
    nodes = pd.read_csv(run_dir / "timings.csv")["node"]
    head = ray.get_runtime_context().get_node_id()[:8]  # the driver is on the head
    assert nodes.nunique() == 2, nodes.value_counts()
    assert not nodes.str.endswith(head).any()


def _running_evaluators() -> list[psutil.Process]:
    """Worker processes executing an `evaluate_job` task right now (Ray retitles them)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("ray::evaluate_job"):
            found.append(process)
    return found


def test_killing_an_evaluator_process_mid_sweep_loses_nothing(
    cluster: Cluster, tiny_run: TrainRunSummary, evaluated_run_dir: Path, tmp_path: Path
) -> None:
    killed: list[int] = []

    def kill_one(done: int, failed: int, total: int) -> None:
        del failed, total
        if killed or done < 2:
            return
        deadline = time.monotonic() + 10
        while not (running := _running_evaluators()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running, "no evaluate_job task was running to kill"
        running[0].send_signal(signal.SIGKILL)
        killed.append(running[0].pid)

    run_dir = _fresh_run(tiny_run, tmp_path / "run")
    stats = _sweep_on_cluster(run_dir, on_update=kill_one)
    assert killed and stats.retried >= 1, (killed, stats)
    _assert_same_results(run_dir, evaluated_run_dir)
    assert pd.read_csv(run_dir / "timings.csv")["attempts"].max() >= 2


def test_removing_a_worker_node_mid_sweep_loses_nothing(
    cluster: Cluster, tiny_run: TrainRunSummary, evaluated_run_dir: Path, tmp_path: Path
) -> None:
    removed: list[str] = []

    def remove_one(done: int, failed: int, total: int) -> None:
        del failed, total
        if removed or done < 2:
            return
        node = cluster.worker_nodes and next(iter(cluster.worker_nodes))
        assert node, "the cluster has no worker node left"
        removed.append(node.unique_id)
        cluster.remove_node(node, allow_graceful=False)

    run_dir = _fresh_run(tiny_run, tmp_path / "run")
    try:
        _sweep_on_cluster(run_dir, on_update=remove_one)
    finally:  # leave the module's cluster as it was for any later test
        cluster.add_node(num_cpus=1, resources={"evaluator": 2}, node_ip_address=LOOPBACK)
    assert removed
    _assert_same_results(run_dir, evaluated_run_dir)
