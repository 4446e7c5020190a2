"""The "Does emphasis help?" verdict says what the CIs say, and never more."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from dashboards import report
from dashboards.verdict import Outcome, outcome, verdict


def _summary(*rows: tuple[str, str, str, float, float, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "level": "family",
                "variant": variant,
                "family": family,
                "attribute": attribute,
                "difference": difference,
                "diff_ci_low": low,
                "diff_ci_high": high,
            }
            for variant, family, attribute, difference, low, high in rows
        ]
    )


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.001, 0.02, Outcome.BETTER),
        (-0.02, -0.001, Outcome.WORSE),
        (-0.01, 0.01, Outcome.NO_DIFFERENCE),
        (0.0, 0.03, Outcome.NO_DIFFERENCE),  # a CI that touches 0 contains it
        (-0.03, 0.0, Outcome.NO_DIFFERENCE),
    ],
)
def test_only_a_ci_that_excludes_zero_is_significant(
    low: float, high: float, expected: Outcome
) -> None:
    assert outcome(low, high) is expected


def test_a_ci_containing_zero_gives_no_significant_difference_whatever_the_estimate() -> None:
    text = verdict(
        _summary(
            ("emphasized", "noise", "shape", 0.04, -0.001, 0.08),  # large, but not significant
            ("emphasized", "corruption", "shape", -0.03, -0.07, 0.002),
        )
    )
    assert "no significant difference from the normal model" in text
    assert "better" not in text and "worse" not in text and "helps" not in text


def test_significant_and_mixed_results_are_named_per_attribute() -> None:
    text = verdict(
        _summary(
            ("emphasized", "noise", "shape", -0.025, -0.027, -0.022),
            ("emphasized", "noise", "size", -0.03, -0.035, -0.029),
            ("emphasized", "corruption", "size", 0.013, 0.009, 0.017),
            ("emphasized", "corruption", "colour", 0.0, -0.001, 0.001),
            ("emphasized", "adversarial", "colour", 0.004, 0.001, 0.007),
            ("emphasized", "adversarial", "size", -0.037, -0.069, -0.007),
            ("normal", "noise", "shape", 0.0, 0.0, 0.0),  # the reference itself: never judged
        )
    )
    assert "Under noise, emphasized is significantly worse on shape (-2.50 points" in text
    assert "Under corruptions, emphasized is significantly better on size (+1.30 points" in text
    assert "no significant difference on colour" in text
    assert "helps under corruptions" in text and "hurts under noise" in text
    assert "helps some attributes and hurts others under adversarial attacks" in text
    assert "normal is" not in text
    assert "not corrected for multiple comparisons" in text


def test_no_comparison_leaves_the_question_open() -> None:
    assert "stays open" in verdict(_summary())


def test_the_search_choice_is_reported_with_where_it_was_made() -> None:
    search = {
        "chosen": {"spec": "topk:alpha=2,k=4", "robustness_gain": 0.8, "clean_cost": 0.3},
        "variant": "searched",
    }
    rows = _summary(("searched", "noise", "shape", 0.01, 0.002, 0.02))
    text = verdict(rows, search)
    assert "chose topk:alpha=2,k=4 on the validation split" in text
    assert "test-split result" in text
    assert "not been evaluated on the test split yet" in verdict(
        _summary(("emphasized", "noise", "shape", 0.01, 0.002, 0.02)), search
    )


def test_the_report_s_search_section_shows_the_choice_and_the_front(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "spec": ["identity", "topk:alpha=2,k=4"],
            "clean_accuracy": [99.0, 98.5],
            "robust_accuracy": [60.0, 61.0],
            "adversarial_accuracy": [float("nan")] * 2,
            "clean_cost": [0.0, 0.5],
            "robustness_gain": [0.0, 1.0],
            "adversarial_gain": [float("nan")] * 2,
            "pareto": [True, True],
            "chosen": [False, True],
        }
    )
    search = {
        "chosen": {"spec": "topk:alpha=2,k=4"},
        "rule": "the largest robustness gain",
        "variant": "searched",
        "n": 500,
        "conditions": ["fog@3", "gaussian@0.1"],
    }
    notes: list[str] = []
    variants = ["normal", "searched"]

    def section(table: pd.DataFrame | None, search: dict[str, Any] | None) -> list[str]:
        files = SimpleNamespace(search_table=table, search=search)  # the two files it reads
        return report._search_section(files, tmp_path, notes, variants)  # type: ignore[arg-type]

    html = "".join(section(table, search))
    assert "<code>topk:alpha=2,k=4</code> by the rule: the largest robustness gain" in html
    assert "500 validation images" in html and "fog@3, gaussian@0.1" in html
    assert not notes and (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    nothing = "".join(section(table, {**search, "chosen": None}))
    assert "No transform met the rule" in nothing
    assert section(None, None) == []


def test_a_ci_excluding_zero_is_not_significant_after_holm() -> None:
    """The verdict reads Holm-adjusted p-values: a CI above 0 whose adjusted p is 0.2 is no
    significant difference; the same CI with an adjusted p of 0.01 is."""
    summary = _summary(
        ("emphasized", "noise", "shape", 0.02, 0.001, 0.04),
        ("emphasized", "noise", "size", 0.03, 0.01, 0.05),
    ).assign(p_holm=[0.2, 0.01])
    text = verdict(summary)
    assert "significantly better on size" in text
    assert "no significant difference on shape" in text
    assert "Holm" in text and "2 family-level tests" in text
    assert outcome(0.001, 0.04, 0.2) is Outcome.NO_DIFFERENCE
    assert outcome(0.001, 0.04, 0.01) is Outcome.BETTER
    assert outcome(-0.04, -0.001, float("nan")) is Outcome.WORSE  # an older run: CI alone
