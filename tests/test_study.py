"""`iamt study`: bad study files refused before any work; the study statistics against values
worked out by hand; a tiny study end to end on local Ray, each member byte-identical to its
own `iamt run`, and a rerun that resumes an interrupted member and skips the finished ones."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from cluster.cli import main
from cluster.study import jobs_done, load_study
from iamt.config import ConfigError
from iamt.rundir import (
    RESULTS,
    STUDY_COLUMNS,
    STUDY_GRID,
    STUDY_MEMBERS,
    STUDY_SEED_COLUMNS,
    STUDY_SEEDS,
    STUDY_TABLE,
    RunDirectory,
)
from robustness.metrics import hierarchical_bootstrap
from robustness.study import POOLED, MemberResults, study_tables
from tests.conftest import TINY, start_cli

# A sweep of two model-independent families: seconds per member.
STUDY_SWEEP: dict[str, Any] = {
    "shard_size": 64,
    "batch_size": 64,
    "noise": {"types": ["gaussian"], "strengths": [0.1, 0.3], "n_samples": 64},
    "corruptions": {"names": ["pixelate"], "severities": [2, 5], "n_samples": 64},
    "attacks": {"methods": [{"name": "fgsm"}], "linf_epsilons": [0.03], "n_samples": 16},
}
BASE: dict[str, Any] = {
    **TINY,
    "robustness": STUDY_SWEEP,
    "cluster": {"num_cpus": 2, "train": {"num_workers": 1}, "sweep": {"max_in_flight": 2}},
}


def _study_file(tmp_path: Path, study: dict[str, Any], base: dict[str, Any] = BASE) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **study}, sort_keys=False))
    return path


# --------------------------------------------------------------------------- bad study files


@pytest.mark.parametrize(
    ("study", "named"),
    [
        ({"seeds": [0, 1], "grid": {"train.no_such_key": [1, 2]}}, "no_such_key"),
        ({"seeds": [0], "grid": {"train.mask_sparsity": []}}, "train.mask_sparsity"),
        ({"seeds": [0], "grid": {"robustness.noise.n_samples": [8, 16]}}, "robustness.noise"),
        ({"seeds": [0, 1, 0], "grid": {}}, "[0]"),
        ({"seeds": [], "grid": {}}, "seeds"),
        ({"seeds": [0], "grid": {"train.mask_sparsity": [0.1, 0.1]}}, "more than once"),
        ({"seeds": [0], "grid": {"model.mask_mode": ["residual", "additive"]}}, "additive"),
    ],
)
def test_a_bad_study_is_refused_before_any_work(
    tmp_path: Path, study: dict[str, Any], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _study_file(tmp_path, {"study": study})
    with pytest.raises(ConfigError, match=None) as error:
        load_study(path)
    assert named in str(error.value)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_members_are_grid_points_times_seeds(tmp_path: Path) -> None:
    grid = {"train.mask_sparsity": [0.1, 0.5], "importance.method": ["mean_mask", "gradient"]}
    _, members = load_study(_study_file(tmp_path, {"study": {"seeds": [4, 7], "grid": grid}}))
    assert len(members) == 8
    assert len({m.name for m in members}) == 8
    first = members[0]
    assert first.name == "mask_sparsity-0.1_method-mean_mask_seed-4"
    assert first.grid_point == "train.mask_sparsity=0.1; importance.method=mean_mask"
    assert first.config.seed == 4 and first.config.train.mask_sparsity == 0.1
    assert first.config.name == first.name
    assert {m.config.importance.method.value for m in members} == {"mean_mask", "gradient"}


# --------------------------------------------------------------------------- the statistics


def test_the_hierarchical_bootstrap_resamples_seeds_as_worked_out_by_hand() -> None:
    # No image variance within a seed: every replicate is the mean of S seed means drawn with
    # replacement from {1, 0}: 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4.
    ones, zeros = np.ones(40, dtype=np.int64), np.zeros(40, dtype=np.int64)
    ids = np.arange(40)
    effect = hierarchical_bootstrap([ones, zeros], [ids, ids], n_boot=4000, seed=1)
    assert effect.effect == 0.5
    assert (effect.ci_low, effect.ci_high) == (0.0, 1.0)
    shares = [np.mean(effect.replicates == v) for v in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    # One seed: the interval is that seed's image bootstrap; a constant gives a point.
    alone = hierarchical_bootstrap([ones], [ids], n_boot=500)
    assert (alone.effect, alone.ci_low, alone.ci_high) == (1.0, 1.0, 1.0)
    assert alone.p_value == 0.0  # no spread at all: nothing to doubt
    # The p-value is the normal one from the bootstrap's standard error.
    se = float(effect.replicates.std(ddof=1))
    assert effect.p_value == pytest.approx(2 * stats.norm.sf(0.5 / se))


def test_the_hierarchical_interval_is_wider_than_the_images_alone() -> None:
    rng = np.random.default_rng(0)
    seeds = [rng.choice([-1, 0, 1], size=300, p=[0.2, 0.5, 0.3]) for _ in range(3)]
    seeds[0] = rng.choice([-1, 0, 1], size=300, p=[0.4, 0.5, 0.1])  # one seed disagrees
    ids = [np.arange(300)] * 3
    both = hierarchical_bootstrap(seeds, ids, n_boot=2000)
    pooled = hierarchical_bootstrap([np.concatenate(seeds)], [np.arange(900)], n_boot=2000)
    assert both.ci_high - both.ci_low > pooled.ci_high - pooled.ci_low


def _results(normal: str, emphasized: str) -> pd.DataFrame:
    """A results.csv-like table: one noise condition, one attribute, outcomes as given."""
    rows = []
    for variant, outcomes in (("normal", normal), ("emphasized", emphasized)):
        rows.append(
            {
                "variant": variant,
                "attribute": "shape",
                "family": "noise",
                "perturbation": "gaussian",
                "severity": np.nan,
                "epsilon": 0.1,
                "source_variant": np.nan,
                "shard_start": 0,
                "outcomes": outcomes,
            }
        )
    return pd.DataFrame(rows)


def test_sign_counts_and_seed_spread_as_worked_out_by_hand() -> None:
    members = [
        # seed 0: emphasis fixes all 30 images normal gets wrong: +1, CI above 0
        MemberResults("a", "g", 0, _results("0" * 30 + "1" * 30, "1" * 60)),
        # seed 1: identical outcomes: effect 0, CI [0, 0], neither above nor below
        MemberResults("b", "g", 1, _results("1" * 60, "1" * 60)),
        # seed 2: emphasis breaks 15 images: −0.25, CI below 0
        MemberResults("c", "g", 2, _results("1" * 60, "0" * 15 + "1" * 45)),
    ]
    tables = study_tables(members, n_boot=1000)
    assert list(tables.study.columns) == STUDY_COLUMNS
    assert list(tables.seeds.columns) == STUDY_SEED_COLUMNS
    row = tables.study[tables.study["attribute"] == "shape"].iloc[0]
    assert row["n_seeds"] == 3
    assert row["effect"] == pytest.approx((0.5 + 0.0 - 0.25) / 3)
    assert (row["seeds_above_0"], row["seeds_below_0"]) == (1, 1)
    assert row["normal_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert row["normal_accuracy_sd"] == pytest.approx(np.std([0.5, 1, 1], ddof=1))
    assert row["ci_low"] < 0 < row["ci_high"]
    assert row["verdict"] == "no consistent effect"
    pooled = tables.study[tables.study["attribute"] == POOLED].iloc[0]
    assert pooled["effect"] == row["effect"]  # one attribute: pooled is the same pairs


def test_grid_points_are_compared_and_a_consistent_effect_is_a_verdict() -> None:
    helps = _results("0" * 40 + "1" * 60, "1" * 100)  # +0.4 on every seed
    same = _results("1" * 100, "1" * 100)
    members = [MemberResults(f"h{s}", "x=1", s, helps) for s in range(3)]
    members += [MemberResults(f"s{s}", "x=2", s, same) for s in range(3)]
    tables = study_tables(members, n_boot=1000)
    verdicts = dict(zip(tables.study["grid_point"], tables.study["verdict"], strict=False))
    assert verdicts == {"x=1": "helps", "x=2": "no consistent effect"}
    grid = tables.grid[tables.grid["attribute"] == "shape"].iloc[0]
    assert (grid["grid_point_a"], grid["grid_point_b"]) == ("x=1", "x=2")
    assert grid["difference"] == pytest.approx(-0.4)
    assert grid["ci_high"] < 0


# --------------------------------------------------------------------------- end to end


def _manifest(run_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((run_dir / "manifest.json").read_text())
    return result


@pytest.mark.e2e
def test_a_tiny_study_end_to_end_and_each_member_equals_its_own_run(tmp_path: Path) -> None:
    grid = {"train.mask_sparsity": [0.1, 0.5]}
    path = _study_file(tmp_path, {"study": {"seeds": [0, 1], "grid": grid}})
    out = tmp_path / "study"
    argv = ["study", str(path), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    members = sorted((out / STUDY_MEMBERS).iterdir())
    assert [m.name for m in members] == [
        "mask_sparsity-0.1_seed-0",
        "mask_sparsity-0.1_seed-1",
        "mask_sparsity-0.5_seed-0",
        "mask_sparsity-0.5_seed-1",
    ]
    for member in members:
        assert _manifest(member)["status"] == "done"
    _, configs = load_study(path)
    total = sum(_manifest(member)["jobs"]["total"] for member in members)
    assert jobs_done(out, configs) == f"jobs {total}/{total}"  # the study bar's job count
    study = pd.read_csv(out / STUDY_TABLE)
    assert set(study["grid_point"]) == {"train.mask_sparsity=0.1", "train.mask_sparsity=0.5"}
    assert set(study["family"]) >= {"clean", "noise", "corruption", "adversarial"}
    assert (study["n_seeds"] == 2).all()
    assert {"ci_low", "ci_high", "seeds_above_0", "seeds_below_0"} <= set(study.columns)
    assert len(pd.read_csv(out / STUDY_SEEDS)) == 2 * len(study)
    assert len(pd.read_csv(out / STUDY_GRID)) == len(study) // 2

    # A member's own `iamt run`, on its own config, gives the same bytes.
    alone = tmp_path / "alone"
    config = RunDirectory(members[2]).config
    assert main(["run", str(config), "--out", str(alone), "--quiet", "--no-report"]) == 0
    assert (alone / RESULTS).read_bytes() == (members[2] / RESULTS).read_bytes()

    # Interrupted mid-sweep: a member's later parts and merged tables gone, as after a kill.
    broken = members[1]
    parts = sorted(RunDirectory(broken).parts.glob("*.csv"))
    kept = {p.name: p.stat().st_mtime_ns for p in parts[: len(parts) // 2]}
    for part in parts[len(parts) // 2 :]:
        part.unlink()
    expected = (broken / RESULTS).read_bytes()
    (broken / RESULTS).unlink()
    finished = {m.name: (m / RESULTS).stat().st_mtime_ns for m in members if m != broken}
    assert main(argv) == 0
    assert (broken / RESULTS).read_bytes() == expected
    assert {p: (RunDirectory(broken).parts / p).stat().st_mtime_ns for p in kept} == kept
    assert {m.name: (m / RESULTS).stat().st_mtime_ns for m in members if m != broken} == finished


@pytest.mark.e2e
def test_a_study_killed_mid_training_resumes(tmp_path: Path) -> None:
    # Long enough a training (tens of seconds) to be caught in it after its first epoch.
    base = {**BASE, "train": {**BASE["train"], "epochs": 20}, "data": {**BASE["data"]}}
    base["data"]["n_train"] = 2048
    path = _study_file(tmp_path, {"study": {"seeds": [0], "grid": {}}}, base)
    out = tmp_path / "study"
    argv = ["study", str(path), "--out", str(out), "--quiet"]
    driver = start_cli(argv)
    member = out / STUDY_MEMBERS / "seed-0"
    storage = RunDirectory(member).train_storage
    deadline = time.monotonic() + 300
    while not any(storage.rglob("checkpoint_*")):  # an epoch's checkpoint, then Ctrl-C
        assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
        assert time.monotonic() < deadline, "no training checkpoint appeared in time"
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) != 0
    assert not (member / RESULTS).exists()
    assert _manifest(member)["stage"] == "train"
    assert main(argv) == 0
    assert _manifest(member)["status"] == "done"
    assert (out / STUDY_TABLE).is_file()
