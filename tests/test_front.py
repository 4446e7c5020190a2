"""The search's Pareto front re-measured on the test sweep: names, measurements and search.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from iamt.io import write_csv
from iamt.rundir import SEARCH_COLUMNS, SEARCH_TABLE, RunDirectory
from iamt.vocabulary import Family
from robustness.config import RobustnessConfig, SearchConfig
from robustness.front import attacked_variants, measure_on_test, remeasure_on_test, variant_names
from robustness.jobs import expand_sweep

# spec, clean_cost, pareto, chosen: identity and three front members, one dominated.
TABLE = pd.DataFrame(
    {
        "spec": ["identity", "power:gamma=0.5", "topk:k=2,alpha=2", "topk:k=4,alpha=2", "x"],
        "clean_cost": [0.0, 3.0, 1.0, 2.0, 4.0],
        "pareto": [True, True, True, True, False],
        "chosen": [False, False, False, True, False],
    }
)


def test_front_members_are_named_in_order_of_clean_cost() -> None:
    on = variant_names(TABLE, SearchConfig(evaluate_front=True))
    assert on == ["normal", "front-2", "front-1", "searched", ""]
    off = variant_names(TABLE, SearchConfig(variant="picked"))
    assert off == ["normal", "", "", "picked", ""]


def _rows(variant: str, family: str, perturbation: str, strength: float | None, correct: list[int]):
    """results.csv rows of one condition: one row per attribute, n = 4 each."""
    axis = "severity" if family == "corruption" else "epsilon"
    return [
        {
            "variant": variant,
            "family": family,
            "perturbation": perturbation,
            "severity": strength if axis == "severity" else None,
            "epsilon": strength if axis == "epsilon" else None,
            "attribute": attribute,
            "n": 4,
            "correct": hits,
        }
        for attribute, hits in zip(["shape", "size"], correct, strict=True)
    ]


def _results() -> pd.DataFrame:
    rows = []
    # normal: clean 7/8; gaussian@0.1 4/8; fog@3 2/8   -> robust (50 + 25) / 2 = 37.5
    # front-1: clean 6/8; gaussian@0.1 6/8; fog@3 3/8  -> robust (75 + 37.5) / 2 = 56.25
    for variant, counts in {"normal": (4, 3, 2, 2, 1, 1), "front-1": (3, 3, 3, 3, 2, 1)}.items():
        rows += _rows(variant, "clean", "none", None, list(counts[0:2]))
        rows += _rows(variant, "noise", "gaussian", 0.1, list(counts[2:4]))
        rows += _rows(variant, "corruption", "fog", 3, list(counts[4:6]))
        # An attack is not part of the search's robustness gain.
        rows += _rows(variant, "adversarial", "fgsm", 0.03, [0, 0])
    return pd.DataFrame(rows)


def test_measure_on_test_pools_attributes_and_averages_conditions() -> None:
    measured = measure_on_test(_results())
    assert measured.loc["normal", "clean_accuracy"] == pytest.approx(87.5)
    assert measured.loc["normal", "robust_accuracy"] == pytest.approx(37.5)
    assert measured.loc["front-1", "clean_accuracy"] == pytest.approx(75.0)
    assert measured.loc["front-1", "robust_accuracy"] == pytest.approx(56.25)


def test_remeasure_fills_the_test_columns_of_the_named_rows_only(tmp_path: Path) -> None:
    table = TABLE.assign(variant=["normal", "front-1", "", "searched", ""])
    for column in SEARCH_COLUMNS:
        if column not in table:
            table[column] = 1.0
    run = RunDirectory(tmp_path)
    write_csv(tmp_path / SEARCH_TABLE, table[SEARCH_COLUMNS])
    before = run.read_csv(SEARCH_TABLE)
    assert before is not None

    remeasure_on_test(tmp_path, _results())  # "searched" is not in these results
    after = run.read_csv(SEARCH_TABLE)
    assert after is not None
    assert after["test_clean_cost"].tolist()[:2] == [0.0, 12.5]
    assert after["test_robustness_gain"].tolist()[:2] == [0.0, 18.75]
    assert after[["test_clean_cost", "test_robustness_gain"]].iloc[2:].isna().all().all()
    untouched = [c for c in SEARCH_COLUMNS if not c.startswith("test_")]
    pd.testing.assert_frame_equal(after[untouched], before[untouched])


def test_front_members_join_the_image_jobs_and_the_attacks_stay_with_the_others() -> None:
    robustness = RobustnessConfig.model_validate(
        {
            "noise": {"types": ["gaussian"], "strengths": [0.1], "n_samples": 8},
            "corruptions": {"names": ["fog"], "severities": [3], "n_samples": 8},
            "attacks": {"methods": [{"name": "fgsm"}], "n_samples": 8, "linf_epsilons": [0.01]},
        }
    )
    variants = ["normal", "searched", "front-1", "front-2"]
    jobs = expand_sweep(
        robustness,
        variants=variants,
        attribute_names=["shape"],
        n_available=8,
        run_seed=0,
        attack_variants=attacked_variants(variants),
    )
    by_family = {job.family: job for job in jobs}
    for family in (Family.CLEAN, Family.NOISE, Family.CORRUPTION):
        assert by_family[family].variants == tuple(variants)
    attack = by_family[Family.ADVERSARIAL]
    assert attack.variants == ("normal", "searched") and attack.transfer
