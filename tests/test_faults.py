"""Faults and first contact: a full disk, two writers, the driver out of memory, a config that
says nothing, and a CLI that answers before importing torch.

The full disk is real: a small tmpfs mounted for the test (root only; skipped with the reason
where mounting is refused). Each fault must end as one line `iamt CMD: error: ...` with exit
status 2, leave nothing half-written, and let a rerun finish with the fault-free files byte for
byte. The second writer is a real process holding the run directory's flock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from cluster.cli import execute, main
from cluster.config import load_config
from iamt.rundir import CHECKPOINTS, CLEAN, IMPORTANCE, LOCK, PARTS, RESULTS
from iamt.runlock import RunDirectoryInUseError, hold_run_lock
from robustness.catalogue import (
    BENCHMARK_CORRUPTION_NAMES,
    CATALOGUE,
    VALIDATION_CORRUPTION_NAMES,
    catalogue_names,
)
from robustness.perturbations import PERTURBATIONS, register_perturbation
from robustness.perturbations.base import spec_of
from robustness.perturbations.noise import GaussianNoise
from robustness.runner import TrainRunSummary
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096
# A sweep of 7 small jobs (clean and gaussian noise on two shards), as `--set`s on a run.
SMALL_SWEEP_SETS = [
    "--set=robustness.shard_size=48",
    "--set=robustness.noise.types=[gaussian]",
    "--set=robustness.noise.strengths=[0.05,0.2]",
    "--set=robustness.noise.n_samples=96",
    "--set=robustness.corruptions.names=[]",
    "--set=robustness.attacks.methods=[]",
]


# --------------------------------------------------------------------------- a small disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """A file that takes all of `disk`'s free space but `leave` bytes."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - leave))
    return filler


def leftovers(run_dir: Path) -> list[Path]:
    """Temporary files of an interrupted atomic write (there must be none)."""
    return sorted(run_dir.rglob("*.tmp"))


def _one_line_error(err: str, command: str) -> str:
    assert err.startswith(f"iamt {command}: error: "), err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_a_full_disk_during_training_ends_in_one_line_and_a_rerun_resumes(
    small_disk: Path,
    tiny_run: TrainRunSummary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run_dir = small_disk / "run"
    filler = fill(small_disk, leave=200 * 1024)  # the checkpoint fits; the mask samples do not
    train = ["train", str(config), "--out", str(run_dir), "--quiet"]

    assert main(train) == 2
    err = _one_line_error(capsys.readouterr().err, "train")
    assert f"no space left on device while writing {run_dir}" in err
    assert "kept: the trained checkpoint" in err and "a rerun" in err
    assert not leftovers(run_dir)

    filler.unlink()
    assert main(train) == 0
    reference = tiny_run.run_dir
    for name in (f"{CHECKPOINTS}/normal.safetensors", IMPORTANCE, CLEAN):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


def test_a_full_disk_during_a_sweep_keeps_the_finished_jobs_and_a_rerun_gives_the_same_results(
    small_disk: Path,
    tiny_run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = tmp_path / "reference"
    shutil.copytree(tiny_run_dir, reference)
    assert execute(["evaluate", str(reference), "--quiet", *SMALL_SWEEP_SETS]) == 0
    run_dir = small_disk / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    filler = fill(small_disk, leave=3 * PAGE)  # room for a few of the 7 part files
    evaluate = ["evaluate", str(run_dir), "--quiet", *SMALL_SWEEP_SETS]

    assert main(evaluate) == 2
    err = _one_line_error(capsys.readouterr().err, "evaluate")
    assert f"no space left on device while writing {run_dir}" in err
    finished = len(list((run_dir / PARTS).glob("*.csv")))
    assert f"{finished} finished job(s)" in err or finished == 0
    assert "a rerun" in err and not (run_dir / RESULTS).exists()
    assert not leftovers(run_dir)

    filler.unlink()
    assert main(evaluate) == 0
    assert (run_dir / RESULTS).read_bytes() == (reference / RESULTS).read_bytes()


def test_running_out_of_memory_in_the_driver_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real allocation failure: 10^12 training images do not fit in any memory."""
    config = tmp_path / "huge.yaml"
    huge = yaml.safe_load(yaml.safe_dump(TINY))  # a deep copy
    huge["data"]["n_train"] = 10**12
    config.write_text(yaml.safe_dump(huge))
    out = tmp_path / "out"

    assert main(["train", str(config), "--out", str(out), "--quiet"]) == 2
    err = _one_line_error(capsys.readouterr().err, "train")
    assert "out of memory in the driver" in err and "MemoryError" in err
    assert not out.exists(), "the refused run left its directory behind"


# --------------------------------------------------------------------------- two writers

HOLDER = textwrap.dedent(
    """
    import sys
    from iamt.runlock import hold_run_lock
    with hold_run_lock(sys.argv[1], "iamt run configs/demo.yaml --out elsewhere"):
        print("held", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def held(tmp_path: Path, evaluated_run_dir: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A copy of an evaluated run whose lock another process holds."""
    run_dir = tmp_path / "run"
    shutil.copytree(evaluated_run_dir, run_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    try:
        yield run_dir, holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_is_refused_at_once_naming_the_holder(
    held: tuple[Path, subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, holder = held
    recorded = json.loads((run_dir / LOCK).read_text())
    assert recorded["pid"] == holder.pid and recorded["host"] == socket.gethostname()
    before = sorted(p.name for p in (run_dir / PARTS).iterdir())

    for command in (["evaluate", str(run_dir)], ["search", str(run_dir)]):
        assert main([*command, "--quiet"]) == 2
        err = _one_line_error(capsys.readouterr().err, command[0])
        assert f"in use by pid {holder.pid} (iamt run configs/demo.yaml" in err
        assert f"on {socket.gethostname()}" in err
    assert sorted(p.name for p in (run_dir / PARTS).iterdir()) == before

    # Readers never lock: the report is written while the writer holds the directory.
    assert execute(["report", str(run_dir)]) == 0

    holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops its lock
    holder.wait()
    with hold_run_lock(run_dir, "iamt evaluate again"):
        assert json.loads((run_dir / LOCK).read_text())["command"] == "iamt evaluate again"
    assert not (run_dir / LOCK).exists(), "a clean exit removes the lock file"


def test_the_lock_goes_on_ctrl_c_and_a_refused_command_leaves_no_directory(
    tmp_path: Path,
) -> None:
    new = tmp_path / "a" / "b"
    refused = pytest.raises(RunDirectoryInUseError, match="in use by pid")
    with pytest.raises(KeyboardInterrupt), hold_run_lock(new, "iamt train x"):
        with refused, hold_run_lock(new, "iamt train y"):  # a second open file: refused too
            pass
        raise KeyboardInterrupt
    assert not (tmp_path / "a").exists(), "the directories made for the lock were left behind"
    with hold_run_lock(new, "iamt train z"):  # free again
        assert (new / LOCK).is_file()


def test_without_flock_support_the_command_warns_and_runs_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file system's answer is simulated (no such mount here); the fallback is real."""
    import errno

    import iamt.runlock

    def refuse(handle: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(iamt.runlock.fcntl, "flock", refuse)
    warned = pytest.warns(UserWarning, match="does not support flock")
    with warned, hold_run_lock(tmp_path, "iamt run x"):
        assert not (tmp_path / LOCK).exists()


# --------------------------------------------------------------------------- first contact


FAST_CHECKS = textwrap.dedent(
    """
    import sys
    from cluster.cli import main
    codes = []
    for argv in sys.argv[1:]:
        try:
            codes.append(main(argv.split("|")))
        except SystemExit as done:  # --help
            codes.append(done.code)
    heavy = ("torch", "torchvision", "ray", "foolbox", "streamlit", "imagecorruptions")
    print(codes, sorted({m.split(".")[0] for m in sys.modules} & set(heavy)))
    """
)


def test_help_and_config_or_path_errors_import_nothing_heavy(tmp_path: Path) -> None:
    """A behaviour test (the wall times are in `make bench`): every one of these answers
    before torch, Ray, foolbox or Streamlit is imported."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("# name: demo\n\n")
    bad_noise = tmp_path / "bad.yaml"
    bad_noise.write_text(yaml.safe_dump({**TINY, "robustness": {"noise": {"types": ["pink"]}}}))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argvs = [
        "--help",
        "run|--help",
        "train|--help",
        f"run|{empty}",
        f"train|{bad_noise}",
        f"run|{tmp_path / 'missing.yaml'}",
        f"evaluate|{tmp_path}",
        f"train|{good}|--out|{a_file / 'run'}",
    ]
    done = subprocess.run(
        [sys.executable, "-c", FAST_CHECKS, *argvs],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "[0, 0, 0, 2, 2, 2, 2, 2] []", done.stdout[-2000:]
    assert "is empty" in done.stderr and "'pink'" in done.stderr and "is a file" in done.stderr


def test_a_config_without_a_name_keeps_the_default(tmp_path: Path) -> None:
    path = tmp_path / "seed-only.yaml"
    path.write_text("seed: 7  # no name\n")
    config = load_config(path)
    assert config.name == "run" and config.seed == 7


# --------------------------------------------------------------------------- the catalogue


def test_the_catalogue_and_the_registered_classes_are_equal() -> None:
    assert catalogue_names() == PERTURBATIONS.names()
    for name, cls in PERTURBATIONS.items():
        assert spec_of(cls) == CATALOGUE[name], name


def test_the_catalogue_lists_imagecorruptions_own_names() -> None:
    import imagecorruptions

    names = imagecorruptions.get_corruption_names
    assert (tuple(names("common")), tuple(names("validation"))) == (
        BENCHMARK_CORRUPTION_NAMES,
        VALIDATION_CORRUPTION_NAMES,
    )


def test_a_class_that_disagrees_with_the_catalogue_cannot_register() -> None:
    @dataclasses.dataclass(frozen=True)
    class WiderGaussian(GaussianNoise):
        max_strength: ClassVar[float] = 2.0

    with pytest.raises(AssertionError, match=r"'gaussian' disagrees.*max_strength"):
        register_perturbation(WiderGaussian)
    assert PERTURBATIONS.get("gaussian") is GaussianNoise
