"""`iamt report`: a static HTML report whose images exist, with the headline and methods."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cluster.cli import main
from dashboards import report
from iamt.rundir import SEARCH_REPORT, SEARCH_TABLE, RunDirectory
from tests.test_dashboard_app import search_table


@pytest.fixture
def run_dir(evaluated_run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "tiny"
    shutil.copytree(evaluated_run_dir, target)
    return target


def test_report_images_exist_and_the_sections_are_there(run_dir: Path) -> None:
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 8
    for source in sources:
        assert source.startswith("plots/") and source.endswith(".png")
        image = run_dir / source
        assert image.is_file() and image.stat().st_size > 1000, source
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for heading in [
        "Clean accuracy",
        "Does emphasis help?",
        "Noise and corruptions",
        "Adversarial robustness",
        "Sanity checklist",
        "Channel importance",
        "Methods",
    ]:
        assert heading in page, heading
    # The methods name the transforms, the attacks with their parameters, counts and seeds.
    assert "topk:k=4,alpha=2" in page
    assert "linf_pgd(steps=3)" in page and "boundary(steps=10)" in page
    assert "run seed 3" in page
    # Which engine corrupted what: `auto` serves both of the fixture's corruptions natively.
    assert re.search(r"corruption engine.*native torch port[^<]*: fog, pixelate", page, re.S)
    # The verdict is generated from the CIs; the search section appears only after a search.
    assert "<b>Verdict.</b>" in page and "Emphasis search" not in page
    assert "correction over each variant" in page and "family-level tests" in page
    assert "<h2>Notes</h2>" not in page  # every chart was drawn
    # Attention drift: its plot, and a generated answer that never claims beyond its CI.
    assert "plots/drift.png" in sources
    assert re.search(
        r"<b>Answer\.</b> emphasized: (yes|no|no significant difference)[,( ].*95% CI", page
    )
    assert "http://" not in page and "https://" not in page  # readable offline


def test_report_refuses_a_directory_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def _drift(normal: list[float], emphasized: list[float]) -> pd.DataFrame:
    """drift.csv rows: one noise job per value, one attribute, both variants."""
    rows = []
    for variant, values in (("normal", normal), ("emphasized", emphasized)):
        for i, value in enumerate(values):
            rows.append(
                {
                    "job_id": f"j{i}",
                    "family": "noise",
                    "perturbation": "gaussian",
                    "strength": 0.1,
                    "variant": variant,
                    "attribute": "shape",
                    "mask_cosine": value,
                    "importance_rank_correlation": 1.0,
                    "n": 10,
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("emphasized", "answer"),
    [
        ([0.95, 0.96, 0.97, 0.96], "emphasized: yes, its masks move less"),
        ([0.85, 0.86, 0.87, 0.86], "emphasized: no, its masks move more"),
        ([0.91, 0.89, 0.92, 0.88], "emphasized: no significant difference"),
        ([0.95], "emphasized: too few pairs"),
    ],
)
def test_the_drift_answer_follows_the_paired_interval(emphasized: list[float], answer: str) -> None:
    normal = [0.90, 0.91, 0.92, 0.91]
    stability = report.drift_stability(_drift(normal, emphasized))
    pooled = stability[stability["family"] == "all"].iloc[0]
    pairs = min(len(normal), len(emphasized))
    assert pooled["pairs"] == pairs
    differences = np.array(emphasized) - np.array(normal[:pairs])
    assert pooled["difference"] == pytest.approx(differences.mean())
    if pairs > 1:  # the 95% t interval over the pairs
        half = stats.t.ppf(0.975, pairs - 1) * differences.std(ddof=1) / np.sqrt(pairs)
        assert pooled["ci_high"] - pooled["ci_low"] == pytest.approx(2 * half)
    assert report.drift_answer(stability).startswith(answer)


def test_a_run_without_drift_says_so(tmp_path: Path) -> None:
    section = "".join(report._drift_section(None, report.Canvas(tmp_path / "plots")))
    assert "has no drift.csv" in section and not (tmp_path / "plots").exists()


def test_the_search_section_reads_the_typed_search_table(run_dir: Path) -> None:
    """search.csv as the search writes it (True/False flags, an empty column) is read through
    its schema: numbers as numbers, the flags as booleans; the report draws the front."""
    table = pd.DataFrame(
        {
            "spec": ["identity", "topk:alpha=2,k=4", "topk:alpha=3,k=2"],
            "clean_accuracy": [99.0, 98.5, 97.0],
            "robust_accuracy": [60.0, 61.0, 60.5],
            "adversarial_accuracy": [float("nan")] * 3,
            "clean_cost": [0.0, 0.5, 2.0],
            "robustness_gain": [0.0, 1.0, 0.5],
            "adversarial_gain": [float("nan")] * 3,
            "pareto": [True, True, False],
            "chosen": [False, True, False],
        }
    )
    table.to_csv(run_dir / SEARCH_TABLE, index=False)
    chosen = {"spec": "topk:alpha=2,k=4", "robustness_gain": 1.0, "clean_cost": 0.5}
    search = {"chosen": chosen, "rule": "the largest robustness gain", "variant": "searched"}
    (run_dir / SEARCH_REPORT).write_text(json.dumps({**search, "n": 64, "conditions": ["fog@3"]}))
    typed = RunDirectory(run_dir).read_csv(SEARCH_TABLE)
    assert typed is not None and typed["clean_cost"].dtype.kind == "f"
    assert str(typed["pareto"].dtype) == "boolean"
    assert typed["chosen"].tolist() == [False, True, False]
    page = report.write_report(run_dir).read_text()
    assert "<h3>Emphasis search (validation split)</h3>" in page
    assert "3 candidate transforms" in page and "plots/pareto.png" in page
    assert "The emphasis search chose topk:alpha=2,k=4" in page
    assert "<h2>Notes</h2>" not in page
    # Written before the sweep re-measured candidates on test: validation only, and said so.
    assert "The front was not re-measured on the test split" in page
    assert "plots/pareto_test.png" not in page


def test_the_report_plots_the_front_on_validation_and_re_measured_on_test(run_dir: Path) -> None:
    table = search_table()  # with the sweep's variants and test numbers (evaluate_front on)
    table.to_csv(run_dir / SEARCH_TABLE, index=False)
    chosen = {"spec": "topk:alpha=2,k=4", "robustness_gain": 1.0, "clean_cost": 0.5}
    search = {"chosen": chosen, "rule": "the largest worst-family gain", "variant": "searched"}
    (run_dir / SEARCH_REPORT).write_text(json.dumps({**search, "n": 64, "conditions": ["fog@3"]}))
    files, notes = report.read_run(run_dir), []  # the search section alone: two plots
    variants = ["normal", "emphasized", "front-1", "searched"]
    page = "".join(report._search_section(files, run_dir / "plots", notes, variants))
    for plot in ("plots/pareto.png", "plots/pareto_test.png"):
        assert plot in page
        assert (run_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<h3>The Pareto front re-measured on the test split</h3>" in page
    assert "not re-measured" not in page and not notes


def test_the_search_s_prediction_stands_next_to_the_test_result() -> None:
    """Per family: the gain the search predicted on validation, and the test-split difference
    of the searched variant (mean, min and max over attributes, in points)."""
    search = {
        "variant": "searched",
        "chosen": {"spec": "topk:k=8", "noise_gain": 1.5, "corruption_gain": -0.5},
    }
    summary = pd.DataFrame(
        [
            {"level": "family", "variant": v, "family": f, "attribute": a, "difference": d}
            for v, f, a, d in [
                ("searched", "noise", "shape", -0.02),
                ("searched", "noise", "size", -0.04),
                ("searched", "corruption", "shape", 0.01),
                ("emphasized", "noise", "shape", 0.5),  # another variant: not this one's
                ("searched", "clean", "shape", 0.3),  # not a searched family
            ]
        ]
    )
    table = report.prediction_table(search, summary).set_index("family")
    assert list(table.index) == ["noise", "corruption"]
    assert table.loc["noise", "predicted_on_validation"] == 1.5
    assert table.loc["noise", "measured_on_test"] == pytest.approx(-3.0)
    assert table.loc["noise", "test_min"] == pytest.approx(-4.0)
    assert table.loc["corruption", "measured_on_test"] == pytest.approx(1.0)
    assert report.prediction_table({"chosen": None}, summary).empty
