"""`iamt run`, the main job, on an embedded local Ray: from a config to results, summary,
manifest and report; the same bytes as `iamt evaluate`; resume after an interrupted driver;
refusals before any work."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.cli import main
from iamt.rundir import RunDirectory
from tests.conftest import SMALL_SWEEP, TINY, start_cli

pytestmark = pytest.mark.e2e

# The config of `evaluated_run_dir`, plus the cluster section (placement only).
CONFIG: dict[str, Any] = {
    **TINY,
    "robustness": SMALL_SWEEP,
    "cluster": {"num_cpus": 2, "sweep": {"max_in_flight": 2}},
}


def _config_file(tmp_path: Path, raw: dict[str, Any] = CONFIG) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _manifest(run_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((run_dir / "manifest.json").read_text())
    return result


def _part_stamps(run_dir: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every part file: a recomputed job would change both."""
    return {
        path.name: (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in RunDirectory(run_dir).parts.glob("*.csv")
    }


def test_iamt_run_on_a_trained_checkpoint_equals_iamt_evaluate_and_reruns_for_free(
    tiny_run_dir: Path, evaluated_run_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    argv = [
        "run",
        str(_config_file(tmp_path)),
        "--out",
        str(run_dir),
        "--checkpoint",
        str(RunDirectory(tiny_run_dir).checkpoint_stem),
        "--quiet",
    ]
    assert main(argv) == 0
    for name in ["results.csv", "summary.csv"]:
        assert (run_dir / name).read_bytes() == (evaluated_run_dir / name).read_bytes(), name
    manifest = _manifest(run_dir)
    assert manifest["status"] == "done" and manifest["stage"] == "done"
    assert manifest["jobs"]["failed"] == 0
    assert manifest["jobs"]["done"] == manifest["jobs"]["total"] > 0
    assert manifest["ray"] == "embedded local Ray (127.0.0.1)"
    assert "trainer" not in manifest  # the checkpoint was adopted, not trained
    assert (run_dir / "report.html").is_file()
    assert (
        RunDirectory(run_dir).checkpoint_stem.with_suffix(".safetensors").read_bytes()
        == (RunDirectory(tiny_run_dir).checkpoint_stem).with_suffix(".safetensors").read_bytes()
    )

    before = _part_stamps(run_dir)
    results = (run_dir / "results.csv").read_bytes()
    assert main(argv) == 0  # everything is there: nothing is recomputed
    assert _part_stamps(run_dir) == before
    assert (run_dir / "results.csv").read_bytes() == results


def test_an_interrupted_run_resumes_without_recomputing_finished_jobs(
    tiny_run_dir: Path, evaluated_run_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    argv = [
        "run",
        str(_config_file(tmp_path)),
        "--out",
        str(run_dir),
        "--checkpoint",
        str(RunDirectory(tiny_run_dir).checkpoint_stem),
        "--quiet",
        "--no-report",
    ]
    driver = start_cli(argv)
    deadline = time.monotonic() + 300
    while len(_part_stamps(run_dir)) < 3:  # let a few jobs finish, then Ctrl-C the driver
        assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
        assert time.monotonic() < deadline, "no part file appeared in time"
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) != 0
    finished = _part_stamps(run_dir)
    manifest = _manifest(run_dir)
    assert manifest["status"] == "failed" and "KeyboardInterrupt" in manifest["error"]
    assert len(finished) < manifest["jobs"]["total"], "the driver finished before the interrupt"

    assert main(argv) == 0
    after = _part_stamps(run_dir)
    assert {name: after[name] for name in finished} == finished  # untouched
    assert len(after) == _manifest(run_dir)["jobs"]["total"]
    for name in ["results.csv", "summary.csv"]:
        assert (run_dir / name).read_bytes() == (evaluated_run_dir / name).read_bytes(), name
    assert _manifest(run_dir)["status"] == "done"
    assert _manifest(run_dir)["error"] is None


def test_a_checkpoint_that_does_not_fit_the_config_is_refused_before_any_work(
    tiny_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wider = {**CONFIG, "model": {**TINY["model"], "widths": [8, 32]}}
    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            str(_config_file(tmp_path, wider)),
            "--out",
            str(run_dir),
            "--checkpoint",
            str(RunDirectory(tiny_run_dir).checkpoint_stem),
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "widths: config (8, 32), checkpoint (8, 16)" in error, error
    assert not run_dir.exists()


def test_a_missing_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "normal"
    code = main(
        [
            "run",
            str(_config_file(tmp_path)),
            "--out",
            str(tmp_path / "run"),
            "--checkpoint",
            str(missing),
        ]
    )
    assert code == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_asking_for_more_than_the_embedded_ray_has_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    greedy = {**CONFIG, "cluster": {"num_cpus": 2, "train": {"num_workers": 3}}}
    run_dir = tmp_path / "run"
    code = main(["run", str(_config_file(tmp_path, greedy)), "--out", str(run_dir)])
    assert code == 2
    error = capsys.readouterr().err
    assert "cluster.train (num_workers × cpus_per_worker CPUs) asks for 3 CPU" in error, error
    assert "the cluster has 2" in error
    assert not run_dir.exists()


def test_an_unreachable_cluster_fails_fast_with_its_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    run_dir = tmp_path / "run"
    started = time.monotonic()
    code = main(["run", str(_config_file(tmp_path)), "--out", str(run_dir), "--address", address])
    assert code == 2
    assert time.monotonic() - started < 30  # Ray alone retries for minutes
    error = capsys.readouterr().err
    assert f"no Ray cluster answers at {address!r}" in error, error
    assert not run_dir.exists()
