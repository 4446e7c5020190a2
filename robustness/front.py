"""Does the search generalise? Its validation Pareto front, re-measured on the test sweep.

The search (`robustness/search.py`) measures every candidate transform on the validation split
and chooses one. A choice that only fits the validation images would look good there and no
better than the rest on test. So each front member gets a sweep variant name (`variant_names`):
the identity is `normal`, the choice is `search.variant`, and with `search.evaluate_front` the
other front members join the test sweep as `front-1`, `front-2`, … in order of validation
clean cost. After the sweep, `remeasure_on_test` fills search.csv's `test_clean_cost` and
`test_robustness_gain` with the same two quantities computed from results.csv: clean accuracy
pooled over attributes, and the mean over the sweep's noise and corruption conditions of the
accuracy pooled over attributes, each against `normal` (points).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from iamt.rundir import SEARCH_TABLE, RunDirectory
from iamt.vocabulary import FRONT_VARIANT_PREFIX, IDENTITY, NORMAL, Family, StrengthAxis
from robustness.config import SearchConfig

IMAGE_FAMILIES = (Family.NOISE, Family.CORRUPTION)  # what the search's robustness gain pools


def variant_names(table: pd.DataFrame, search: SearchConfig) -> list[str]:
    """For each row of the search table (spec, clean_cost, pareto, chosen): the test sweep's
    variant that re-measures it, or "" when none does."""
    names = [""] * len(table)
    others = []
    for position, (_, row) in enumerate(table.iterrows()):
        if row["spec"] == IDENTITY:
            names[position] = NORMAL
        elif bool(row["chosen"]):
            names[position] = search.variant
        elif search.evaluate_front and bool(row["pareto"]):
            others.append((float(row["clean_cost"]), str(row["spec"]), position))
    for k, (_, _, position) in enumerate(sorted(others), start=1):
        names[position] = f"{FRONT_VARIANT_PREFIX}{k}"
    return names


def front_variants(report: dict[str, object]) -> dict[str, str]:
    """{front-k: spec} of search.json's front (empty without `search.evaluate_front`)."""
    front = report.get("front") or []
    assert isinstance(front, list)
    return {
        str(member["variant"]): str(member["spec"])
        for member in front
        if str(member.get("variant") or "").startswith(FRONT_VARIANT_PREFIX)
    }


def attacked_variants(variants: Iterable[str]) -> list[str]:
    """The variants a sweep's attacks craft against: all but the front members, which are
    re-measured on the families the search optimises (an attack costs a whole attack each)."""
    return [variant for variant in variants if not variant.startswith(FRONT_VARIANT_PREFIX)]


def measure_on_test(results: pd.DataFrame) -> pd.DataFrame:
    """Per variant of a results.csv: `clean_accuracy` and `robust_accuracy` (points), the
    latter the mean over noise and corruption conditions, as the search measures them."""
    strength = [axis.column for axis in StrengthAxis]
    pooled = (
        results.groupby(["variant", "family", "perturbation", *strength], dropna=False)[
            ["correct", "n"]
        ]
        .sum()
        .reset_index()
    )
    pooled["accuracy"] = 100.0 * pooled["correct"] / pooled["n"]
    clean = pooled[pooled["family"] == Family.CLEAN].groupby("variant")["accuracy"].mean()
    images = pooled[pooled["family"].isin([str(f) for f in IMAGE_FAMILIES])]
    robust = images.groupby("variant")["accuracy"].mean()
    return pd.DataFrame({"clean_accuracy": clean, "robust_accuracy": robust})


def remeasure_on_test(run_dir: Path, results: pd.DataFrame) -> None:
    """Fill search.csv's test columns from the sweep's results.csv rows (atomically); a run
    without a search table is left as it is."""
    run = RunDirectory(run_dir)
    table = run.read_csv(SEARCH_TABLE)
    if table is None or results.empty:
        return
    measured = measure_on_test(results)
    if NORMAL not in measured.index:
        return
    baseline = measured.loc[NORMAL]
    variants = table["variant"].fillna("").astype(str)
    known = variants.isin(measured.index)
    on_test = measured.reindex(variants[known])
    table["test_clean_cost"] = float("nan")
    table["test_robustness_gain"] = float("nan")
    table.loc[known, "test_clean_cost"] = (
        baseline["clean_accuracy"] - on_test["clean_accuracy"]
    ).to_numpy()
    table.loc[known, "test_robustness_gain"] = (
        on_test["robust_accuracy"] - baseline["robust_accuracy"]
    ).to_numpy()
    run.write_csv(SEARCH_TABLE, table)
