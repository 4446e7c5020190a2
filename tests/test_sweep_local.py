"""Jobs, `run_job`, the result files and `iamt evaluate` on a tiny trained run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cluster.cli import main
from cluster.config import RunConfig, load_run_config, parse_config
from iamt.config import ConfigError
from iamt.rundir import RESULT_COLUMNS, SANITY_COLUMNS
from robustness import results, runner
from robustness.jobs import Job, expand_sweep, run_job
from robustness.perturbations import Family
from robustness.runner import TrainRunSummary
from tests.conftest import SMALL_SWEEP, TINY


def _config(**robustness: Any) -> RunConfig:
    return parse_config({**TINY, "robustness": {**SMALL_SWEEP, **robustness}})


@pytest.fixture
def run_dir(tmp_path: Path, tiny_run: TrainRunSummary) -> Path:
    target = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, target)
    return target


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_expand_sweep_is_complete_stable_and_seeded() -> None:
    config = _config()
    kwargs = {"variants": ["normal", "e"], "attribute_names": ["a", "b"], "n_available": 128}
    jobs = expand_sweep(config.robustness, run_seed=0, **kwargs)
    families = pd.Series([job.family.value for job in jobs]).value_counts().to_dict()
    # clean: 64 samples in shards of 48 -> 2; noise 2×2×2; corruptions 2×2×1;
    # attacks: fgsm 2 ε + pgd 2 ε + deepfool 1 + boundary 1.
    assert families == {"clean": 2, "noise": 8, "corruption": 4, "adversarial": 6}
    assert len({job.job_id for job in jobs}) == len(jobs)
    again = expand_sweep(config.robustness, run_seed=0, **kwargs)
    assert [job.job_id for job in again] == [job.job_id for job in jobs]
    other_seed = expand_sweep(config.robustness, run_seed=1, **kwargs)
    assert not {job.job_id for job in other_seed} & {job.job_id for job in jobs}
    noise = [job for job in jobs if job.family is Family.NOISE and job.strength == 0.05]
    assert [(job.shard_start, job.shard_stop) for job in noise][:2] == [(0, 48), (48, 64)]
    deepfool = next(job for job in jobs if job.perturbation == "l2_deepfool")
    assert deepfool.strength is None and deepfool.epsilons == (0.5, 2.0)
    assert deepfool.params == (("steps", 5),)


def test_noise_is_generated_once_and_every_variant_sees_it(run_dir: Path) -> None:
    sweep = runner.prepare_sweep(run_dir, _config())
    job = next(j for j in sweep.jobs if j.family is Family.NOISE and j.strength == 0.2)
    rows = run_job(job, sweep.models, sweep.images, sweep.labels)
    assert len(rows) == 2 * 4  # variants × attributes
    assert rows == run_job(job, sweep.models, sweep.images, sweep.labels)  # pure
    for row in rows:
        assert len(row["outcomes"]) == row["n"] == job.n
        assert row["outcomes"].count("1") == row["correct"]
    # An identity "emphasized" model on the same noisy images gives the same outcomes: the
    # images really are shared between variants.
    identical = dict(sweep.models, emphasized=sweep.models["normal"])
    twin = run_job(job, identical, sweep.images, sweep.labels)
    by_variant = {(r["variant"], r["attribute"]): r["outcomes"] for r in twin}
    for attribute in ["shape", "colour", "size", "background"]:
        assert by_variant[("normal", attribute)] == by_variant[("emphasized", attribute)]


def test_attack_jobs_give_whitebox_transfer_and_distance_rows(run_dir: Path) -> None:
    sweep = runner.prepare_sweep(run_dir, _config())
    pgd = next(j for j in sweep.jobs if j.perturbation == "linf_pgd" and j.strength == 0.05)
    rows = run_job(pgd, sweep.models, sweep.images, sweep.labels)
    whitebox = [r for r in rows if r["family"] == "adversarial"]
    transfer = [r for r in rows if r["family"] == "transfer"]
    assert len(whitebox) == 2 * 4 and len(transfer) == 2 * 4
    assert {(r["variant"], r["source_variant"]) for r in transfer} == {
        ("normal", "emphasized"),
        ("emphasized", "normal"),
    }
    assert all(
        0.0 <= r["success_rate"] <= 1.0 for r in whitebox if r["success_rate"] == r["success_rate"]
    )
    deepfool = next(j for j in sweep.jobs if j.perturbation == "l2_deepfool")
    rows = run_job(deepfool, sweep.models, sweep.images, sweep.labels)
    assert {r["epsilon"] for r in rows} == {0.5, 2.0}
    for variant in ["normal", "emphasized"]:
        for attribute in ["shape", "size"]:
            small, large = (
                next(
                    r
                    for r in rows
                    if r["variant"] == variant and r["attribute"] == attribute and r["epsilon"] == e
                )
                for e in (0.5, 2.0)
            )
            assert small["median_distance"] == large["median_distance"] >= 0
            assert large["correct"] <= small["correct"]  # more budget, fewer robust samples


def test_evaluate_writes_reproducible_complete_results(run_dir: Path, tmp_path: Path) -> None:
    config = _config()
    counts = runner.evaluate_run(run_dir, config, show_progress=False)
    assert counts == {"total": 20, "done": 20, "failed": 0}
    results = pd.read_csv(run_dir / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    assert set(results["family"]) == {"clean", "noise", "corruption", "adversarial", "transfer"}
    assert set(results["variant"]) == {"normal", "emphasized"}
    assert set(results["attribute"]) == {"shape", "colour", "size", "background"}
    assert set(results["perturbation"]) >= {"gaussian", "impulse", "fog", "pixelate", "boundary"}
    assert results["ci_low"].le(results["accuracy"]).all()
    assert results["accuracy"].le(results["ci_high"]).all()
    assert set(results.loc[results["family"] == "corruption", "severity"]) == {1, 5}
    timings = pd.read_csv(run_dir / "timings.csv")
    assert len(timings) == 20 and "wall_s" not in results.columns

    # The same config on a fresh copy of the trained run gives byte-identical files.
    other = tmp_path / "again"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("parts", "*.csv"))
    shutil.copy(run_dir / "importance.csv", other / "importance.csv")
    runner.evaluate_run(other, config, show_progress=False)
    for name in ["results.csv", "summary.csv", "drift.csv"]:
        assert _sha(other / name) == _sha(run_dir / name), name


def test_summary_carries_cis_pairs_and_sanity_flags(run_dir: Path) -> None:
    runner.evaluate_run(run_dir, _config(), show_progress=False)
    summary = pd.read_csv(run_dir / "summary.csv")
    assert summary[["ci_low", "ci_high"]].notna().all().all()
    paired = summary[(summary["variant"] != "normal") & (summary["family"] != "transfer")]
    assert paired[["difference", "diff_ci_low", "diff_ci_high", "mcnemar_p"]].notna().all().all()
    assert (paired["diff_ci_low"] <= paired["difference"] + 1e-12).all()
    unpaired = summary[summary["variant"] == "normal"]
    assert unpaired["difference"].isna().all()
    # Transfer: emphasized on the adversarials crafted on normal − normal on them (white-box).
    results = pd.read_csv(run_dir / "results.csv")
    transfer = summary[(summary["level"] == "family") & (summary["family"] == "transfer")]
    for row in transfer[transfer["variant"] == "emphasized"].itertuples():
        here = results[results["attribute"] == row.attribute]
        fooled_on = here[
            (here["family"] == "transfer")
            & (here["variant"] == "emphasized")
            & (here["source_variant"] == "normal")
        ]
        whitebox = here[
            (here["family"] == "adversarial")
            & (here["variant"] == "normal")
            & here["perturbation"].isin(set(fooled_on["perturbation"]))
        ]
        expected = fooled_on["correct"].sum() / fooled_on["n"].sum()
        expected -= whitebox["correct"].sum() / whitebox["n"].sum()
        assert row.difference == pytest.approx(expected, abs=1e-6)
        assert row.diff_ci_low <= row.difference <= row.diff_ci_high
    assert transfer.loc[transfer["variant"] == "normal", "difference"].isna().all()
    adversarial = summary[(summary["level"] == "family") & (summary["family"] == "adversarial")]
    assert len(adversarial) == 2 * 4
    assert adversarial["sanity_all"].notna().all()
    assert adversarial[SANITY_COLUMNS].notna().any(axis=1).all()
    corruption = summary[(summary["level"] == "family") & (summary["family"] == "corruption")]
    normal_mce = corruption.loc[corruption["variant"] == "normal", "mce"].dropna()
    assert np.allclose(normal_mce, 1.0)  # the baseline's own mCE is 1 by definition
    noise = summary[(summary["level"] == "perturbation") & (summary["family"] == "noise")]
    assert noise["auc"].between(0, 1).all()


def test_a_failing_job_is_recorded_and_the_rest_completes(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config()
    victim = runner.prepare_sweep(run_dir, config).jobs[3]
    real_run_job = runner.run_job

    def flaky(job: Job, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if job.job_id == victim.job_id:
            raise ValueError("injected failure for the test")
        return real_run_job(job, *args, **kwargs)

    monkeypatch.setattr(runner, "run_job", flaky)
    counts = runner.evaluate_run(run_dir, config, show_progress=False)
    assert counts == {"total": 20, "done": 19, "failed": 1}
    failures = pd.read_csv(run_dir / "failures.csv")
    assert failures["job_id"].tolist() == [victim.job_id]
    assert "ValueError: injected failure for the test" in failures["error"].iloc[0]
    results = pd.read_csv(run_dir / "results.csv")
    assert victim.job_id not in set(results["job_id"])
    assert results["job_id"].nunique() == 19

    # Resume: the rerun computes only the failed job and ends complete.
    monkeypatch.setattr(runner, "run_job", real_run_job)
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "parts").iterdir()}
    counts = runner.evaluate_run(run_dir, config, show_progress=False)
    assert counts == {"total": 20, "done": 20, "failed": 0}
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "parts").iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {f"{victim.job_id}.csv"}
    assert pd.read_csv(run_dir / "failures.csv").empty


def test_evaluate_cli_refuses_bad_overrides_before_any_work(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in run_dir.iterdir())
    cases = [
        ("train.epochs=3", "only robustness.* and search.* keys"),
        ("robustness.corruptions.severities=[0, 6]", "severity 0 is invalid"),
        ("robustness.corruptions.names=[fogg]", "unknown corruption name(s) ['fogg']"),
        ("robustness.attacks.linf_epsilons=[-0.1]", "epsilon -0.1 is out of range"),
        ("robustness.attacks.linf_epsilons=[]", "the strength list is empty"),
        ("robustness.noise.types=[pink]", "unknown noise name(s) ['pink']"),
        ("robustness.attacks.methods=[{name: pgd}]", "unknown adversarial name(s) ['pgd']"),
    ]
    for override, fragment in cases:
        assert main(["evaluate", str(run_dir), "--set", override, "--quiet"]) == 2
        assert fragment in capsys.readouterr().err, override
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_load_run_config_needs_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a run directory"):
        load_run_config(tmp_path)


def _damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-25])  # cut mid-row


def _damage_drop_rows(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))  # whole rows gone: parses, but variants/attributes lack


def _damage_flip_outcome(path: Path) -> None:
    text = path.read_text()
    header, first, rest = text.split("\n", 2)
    flipped = first[:-1] + ("0" if first[-1] == "1" else "1")  # correct no longer agrees
    path.write_text(f"{header}\n{flipped}\n{rest}")


def _damage_garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff\x00garbage\n")


@pytest.mark.parametrize(
    "damage", [_damage_truncate, _damage_drop_rows, _damage_flip_outcome, _damage_garbage]
)
def test_a_damaged_part_is_quarantined_reported_and_its_job_recomputed(
    evaluated_run_dir: Path, tmp_path: Path, damage: Any
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(evaluated_run_dir, run_dir)
    config = _config()
    sweep = runner.prepare_sweep(run_dir, config)
    assert not sweep.pending and not sweep.quarantined  # every intact part passes the checks
    victim = sorted((run_dir / "parts").glob("*.csv"))[3]
    damage(victim)
    damaged_bytes = victim.read_bytes()
    others = {p.name: p.stat().st_mtime_ns for p in (run_dir / "parts").glob("*.csv")}
    others.pop(victim.name)

    with pytest.warns(UserWarning, match=f"part file of job {victim.stem} is damaged"):
        counts = runner.evaluate_run(run_dir, config, show_progress=False)

    assert counts["failed"] == 0 and counts["done"] == counts["total"]
    kept = run_dir / "quarantine" / victim.name
    assert kept.read_bytes() == damaged_bytes  # kept for inspection, never deleted
    # The recomputed job equals the original.
    for name in ["results.csv", "summary.csv", "drift.csv"]:
        assert _sha(run_dir / name) == _sha(evaluated_run_dir / name), name
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "parts").glob("*.csv")} == {
        **others,
        victim.name: (run_dir / "parts" / victim.name).stat().st_mtime_ns,
    }  # nothing else was recomputed
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [item["job_id"] for item in manifest["quarantined_parts"]] == [victim.stem]


@pytest.mark.parametrize("job_id", ["3874285363113e16", "0123456789012345", "inf"])
def test_job_ids_that_look_like_numbers_survive_the_part_files(
    evaluated_run_dir: Path, tmp_path: Path, job_id: str
) -> None:
    source = sorted((evaluated_run_dir / "parts").glob("*.csv"))[0]
    rows = pd.read_csv(source, dtype=str, keep_default_na=False).to_dict("records")
    for row in rows:
        row["job_id"] = job_id
    results.write_part(tmp_path, rows)
    frame = results.read_parts(tmp_path, [job_id])
    assert set(frame["job_id"]) == {job_id}
    assert frame["outcomes"].tolist() == [row["outcomes"] for row in rows]


def test_the_corruption_engine_is_chosen_per_corruption_and_recorded(
    run_dir: Path, tmp_path: Path
) -> None:
    from robustness.perturbations.native import NATIVE_CORRUPTIONS

    def corruption_jobs(**corruptions: Any) -> list[Job]:
        robustness = {**SMALL_SWEEP, "corruptions": {**SMALL_SWEEP["corruptions"], **corruptions}}
        config = _config(**robustness)
        jobs = expand_sweep(
            config.robustness,
            variants=["normal"],
            attribute_names=["shape"],
            n_available=128,
            run_seed=0,
        )
        return [job for job in jobs if job.family is Family.CORRUPTION]

    reference = corruption_jobs(engine="reference")
    assert all(job.params == () for job in reference)  # ids as before engines existed
    native = corruption_jobs(engine="native")
    assert all(dict(job.params) == {"engine": "native"} for job in native)
    assert not {job.job_id for job in native} & {job.job_id for job in reference}
    mixed = corruption_jobs(engine="reference", engine_overrides={"fog": "native"})
    assert {job.perturbation: dict(job.params).get("engine") for job in mixed} == {
        "fog": "native",
        "pixelate": None,
    }
    auto = corruption_jobs(engine="auto")
    for job in auto:  # auto serves natively exactly what passed the fidelity gate
        spec = NATIVE_CORRUPTIONS.get(job.perturbation)
        assert (dict(job.params).get("engine") == "native") == bool(spec and spec.default)

    config = _config(
        corruptions={
            **SMALL_SWEEP["corruptions"],
            "engine_overrides": {"fog": "native"},
            "engine": "reference",
        }
    )
    runner.evaluate_run(run_dir, config, show_progress=False)
    results = pd.read_csv(run_dir / "results.csv", keep_default_na=False)
    engines = results.groupby("perturbation")["engine"].unique().to_dict()
    assert list(engines.pop("fog")) == ["native"] and list(engines.pop("pixelate")) == ["reference"]
    assert all(list(values) == [""] for values in engines.values())  # not a corruption
