"""summary.csv's standard definitions: ImageNet-C's mCE over its 15 benchmark corruptions
(the 4 validation ones apart), RobustBench's mean corruption accuracy, and Holm-adjusted
p-values (checked against statsmodels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from dashboards import report
from iamt.rundir import PART_COLUMNS
from robustness.metrics import holm
from robustness.perturbations.corruptions import BENCHMARK_CORRUPTIONS, VALIDATION_CORRUPTIONS
from robustness.results import summarize

N = 20  # images per condition


def _row(variant: str, family: str, perturbation: str, severity: int | None, correct: int) -> dict:
    return {
        "job_id": f"{family}-{perturbation}-{severity}",
        "variant": variant,
        "attribute": "shape",
        "family": family,
        "perturbation": perturbation,
        "severity": severity,
        "n": N,
        "correct": correct,
        "seed": 0,
        "shard_start": 0,
        "outcomes": "1" * correct + "0" * (N - correct),
    }


def _parts(corruptions: list[str], seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Parts of two variants on `corruptions` × 5 severities, with random correct counts,
    and the counts themselves: {(variant, corruption): [correct per severity]}."""
    rng = np.random.default_rng(seed)
    rows, counts = [], {}
    for variant, clean in (("normal", 18), ("emphasized", 17)):
        rows.append(_row(variant, "clean", "none", None, clean))
        for name in corruptions:
            counts[variant, name] = [int(c) for c in rng.integers(2, 18, size=5)]
            rows += [
                _row(variant, "corruption", name, severity, correct)
                for severity, correct in zip(range(1, 6), counts[variant, name], strict=True)
            ]
    return pd.DataFrame(rows).reindex(columns=PART_COLUMNS), counts


def _ce(counts: dict, names: list[str], clean_errors: tuple[float, float] | None) -> float:
    """Hand-computed mean CE of `emphasized` against `normal` (relative when clean errors
    are given)."""
    values = []
    for name in names:
        mine = np.array([1 - c / N for c in counts["emphasized", name]])
        base = np.array([1 - c / N for c in counts["normal", name]])
        if clean_errors is not None:
            mine, base = mine - clean_errors[0], base - clean_errors[1]
        values.append(mine.sum() / base.sum())
    return float(np.mean(values))


def _family_row(parts: pd.DataFrame) -> pd.Series:
    summary = summarize(parts, transforms={"normal": "identity", "emphasized": "topk"})
    rows = summary[
        (summary["level"] == "family")
        & (summary["family"] == "corruption")
        & (summary["variant"] == "emphasized")
    ]
    assert len(rows) == 1
    return rows.iloc[0]


def test_mce_averages_the_15_benchmark_corruptions_and_reports_the_4_apart() -> None:
    parts, counts = _parts(list(BENCHMARK_CORRUPTIONS + VALIDATION_CORRUPTIONS))
    row = _family_row(parts)
    benchmark, validation = list(BENCHMARK_CORRUPTIONS), list(VALIDATION_CORRUPTIONS)
    assert len(benchmark) == 15 and len(validation) == 4
    clean_errors = (1 - 17 / N, 1 - 18 / N)
    assert row.mce == pytest.approx(_ce(counts, benchmark, None), rel=1e-12)
    assert row.relative_mce == pytest.approx(_ce(counts, benchmark, clean_errors), rel=1e-12)
    assert row.mce_validation == pytest.approx(_ce(counts, validation, None), rel=1e-12)
    assert row.mce != pytest.approx(_ce(counts, benchmark + validation, None))  # not all 19
    accuracy = np.mean([c / N for name in benchmark for c in counts["emphasized", name]])
    assert row.mean_corruption_accuracy == pytest.approx(accuracy, rel=1e-12)
    assert row.mce_corruptions == 15


def test_a_sweep_with_some_of_the_15_says_so(tmp_path: Path) -> None:
    some = ["fog", "pixelate", "gaussian_blur"]  # two benchmark corruptions, one validation
    parts, counts = _parts(some, seed=1)
    row = _family_row(parts)
    assert row.mce_corruptions == 2
    assert row.mce == pytest.approx(_ce(counts, ["fog", "pixelate"], None), rel=1e-12)
    assert row.mce_validation == pytest.approx(_ce(counts, ["gaussian_blur"], None), rel=1e-12)
    summary = summarize(parts, transforms={"normal": "identity", "emphasized": "topk"})
    html = "".join(report._mce_section(summary))
    assert "has 2 of the 15 ImageNet-C benchmark corruptions" in html
    full = summarize(
        _parts(list(BENCHMARK_CORRUPTIONS))[0],
        transforms={"normal": "identity", "emphasized": "topk"},
    )
    assert "benchmark corruptions: its mCE" not in "".join(report._mce_section(full))


@pytest.mark.parametrize("seed", range(5))
def test_holm_equals_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, size=int(rng.integers(1, 40)))
    p[: len(p) // 3] = p[0]  # ties
    expected = multipletests(p, method="holm")[1]
    assert np.allclose(holm(p), expected, rtol=0, atol=1e-12)


def test_holm_skips_missing_tests_and_refuses_bad_p() -> None:
    adjusted = holm([0.01, np.nan, 0.04])
    assert np.isnan(adjusted[1])
    assert np.allclose(adjusted[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


def test_p_holm_adjusts_each_variant_s_family_level_tests() -> None:
    parts, _ = _parts(["fog", "pixelate"], seed=2)
    noisy = parts[parts["family"] == "corruption"].assign(family="noise", severity=np.nan)
    noisy = noisy.assign(epsilon=0.1, job_id=noisy["job_id"] + "-noise")
    summary = summarize(
        pd.concat([parts, noisy], ignore_index=True),
        transforms={"normal": "identity", "emphasized": "topk"},
    )
    family = summary[summary["level"] == "family"]
    tested = family[family["mcnemar_p"].notna() & (family["family"] != "clean")]
    assert len(tested) == 2  # corruption and noise, of the emphasized variant
    expected = multipletests(tested["mcnemar_p"], method="holm")[1]
    assert np.allclose(tested["p_holm"], expected)
    assert summary.loc[summary["level"] != "family", "p_holm"].isna().all()
    assert family.loc[family["family"] == "clean", "p_holm"].isna().all()  # not a verdict test
