"""The study report (dashboards/study_report.py) and the dashboard's Study page, on a small
synthetic study directory: 2 grid points × 3 training seeds, one emphasized variant, the noise
and corruption families, the attribute "shape" and the pooled "all"."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboards import study_report
from iamt.io import write_csv, write_json
from iamt.rundir import (
    KNOWN_CSVS,
    MANIFEST,
    REPORT,
    STUDY_COLUMNS,
    STUDY_GRID,
    STUDY_GRID_COLUMNS,
    STUDY_MEMBERS,
    STUDY_REPORT,
    STUDY_SEED_COLUMNS,
    STUDY_SEEDS,
    STUDY_TABLE,
    RunDataError,
    read_csv,
)

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboards" / "app.py")
GRID = ("train.mask_sparsity=0.1", "train.mask_sparsity=0.3")
SEEDS = (0, 1, 2)
FAMILIES = ("noise", "corruption")
ATTRIBUTES = ("shape", "all")
# (grid point index, family, attribute) -> (verdict, effect); every other cell has no effect.
VERDICTS = {
    (0, "noise", "all"): ("helps", 0.04),
    (0, "noise", "shape"): ("helps", 0.05),
    (1, "corruption", "all"): ("hurts", -0.03),
}
HEADING = "Verdict: does emphasis help, across training seeds?"


def _member(grid: int, seed: int) -> str:
    return f"g{grid}-seed{seed}"


def _study_rows(verdicts: dict[tuple[int, str, str], tuple[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for g, point in enumerate(GRID):
        for family in FAMILIES:
            for attribute in ATTRIBUTES:
                verdict, effect = verdicts.get(
                    (g, family, attribute), ("no consistent effect", 0.0)
                )
                significant = verdict != "no consistent effect"
                rows.append(
                    {
                        "grid_point": point,
                        "variant": "emphasized",
                        "family": family,
                        "attribute": attribute,
                        "n_seeds": len(SEEDS),
                        "effect": effect + (0.0 if significant else 0.002),
                        "ci_low": effect - 0.01 if significant else -0.01,
                        "ci_high": effect + 0.01 if significant else 0.015,
                        "p_value": 0.001 if significant else 0.6,
                        "p_holm": 0.008 if significant else 1.0,
                        "verdict": verdict,
                        "seeds_above_0": len(SEEDS) if effect > 0 else 0,
                        "seeds_below_0": len(SEEDS) if effect < 0 else 0,
                        "normal_accuracy": 0.8,
                        "normal_accuracy_sd": 0.01,
                    }
                )
    return rows


def _seed_rows(study: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for cell in study.itertuples():
        g = GRID.index(cell.grid_point)
        for seed in SEEDS:
            effect = cell.effect + 0.004 * (seed - 1)
            rows.append(
                {
                    "grid_point": cell.grid_point,
                    "seed": seed,
                    "member": _member(g, seed),
                    "variant": cell.variant,
                    "family": cell.family,
                    "attribute": cell.attribute,
                    "effect": effect,
                    "ci_low": effect - 0.008,
                    "ci_high": effect + 0.008,
                    "normal_accuracy": 0.8,
                }
            )
    return rows


def make_study(
    root: Path, verdicts: dict[tuple[int, str, str], tuple[str, float]] | None = None
) -> Path:
    """A study directory with its three tables and 6 members (manifests only; the first has a
    report.html)."""
    study = pd.DataFrame(_study_rows(VERDICTS if verdicts is None else verdicts))
    write_csv(root / STUDY_TABLE, study[STUDY_COLUMNS])
    write_csv(root / STUDY_SEEDS, pd.DataFrame(_seed_rows(study))[STUDY_SEED_COLUMNS])
    pooled = study[study["grid_point"] == GRID[0]].reset_index(drop=True)
    other = study[study["grid_point"] == GRID[1]].reset_index(drop=True)
    difference = other["effect"] - pooled["effect"]
    grid = pooled[["variant", "family", "attribute"]].assign(
        grid_point_a=GRID[0],
        grid_point_b=GRID[1],
        difference=difference,
        ci_low=difference - 0.02,
        ci_high=difference + 0.02,
    )
    write_csv(root / STUDY_GRID, grid[STUDY_GRID_COLUMNS])
    for g in range(len(GRID)):
        for seed in SEEDS:
            member = root / STUDY_MEMBERS / _member(g, seed)
            manifest = {"name": member.name, "status": "done", "dataset": "shapes"}
            write_json(member / MANIFEST, {**manifest, "variants": {"normal": "identity"}})
    (root / STUDY_MEMBERS / _member(0, 0) / REPORT).write_text("<html></html>\n")
    return root


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    return make_study(tmp_path / "runs" / "sparsity")


# --- reading ------------------------------------------------------------------------------


def test_the_study_tables_are_read_against_their_schemas(study_dir: Path) -> None:
    table = read_csv(study_dir / STUDY_TABLE)
    assert table["effect"].dtype.kind == "f" and table["seeds_above_0"].dtype.kind == "i"
    assert read_csv(study_dir / STUDY_SEEDS)["seed"].dtype.kind == "i"
    assert read_csv(study_dir / STUDY_GRID)["difference"].dtype.kind == "f"
    # A run directory holds none of them: the run's list of known CSVs leaves them out.
    assert not {STUDY_TABLE, STUDY_SEEDS, STUDY_GRID} & set(KNOWN_CSVS)
    frame = pd.read_csv(study_dir / STUDY_TABLE).drop(columns=["verdict"])
    write_csv(study_dir / STUDY_TABLE, frame)
    with pytest.raises(RunDataError, match=r"study\.csv lacks the column\(s\) verdict"):
        read_csv(study_dir / STUDY_TABLE)


# --- the static report --------------------------------------------------------------------


def test_the_report_opens_with_each_grid_point_s_verdict(study_dir: Path) -> None:
    path = study_report.write_study_report(study_dir)
    assert path == study_dir / STUDY_REPORT and path.is_file()
    page = path.read_text(encoding="utf-8")
    assert page.index(HEADING) < page.index("<img") < page.index(f"{STUDY_TABLE})</h2>")
    assert (study_dir / "plots" / f"{study_report.EFFECT_PLOT}.png").is_file()
    for point in GRID:
        assert f"Grid point <code>{point}</code>" in page
    first, second = page.index(GRID[0]), page.index(f"Grid point <code>{GRID[1]}")
    assert (
        "emphasized: helps in noise/all, noise/shape; no consistent effect in 2 of 4 cells."
        in (page[first:second])
    )
    assert (
        "emphasized: hurts in corruption/all; no consistent effect in 3 of 4 cells."
        in (page[second : page.index("<img")])
    )
    assert "+4.00 points, 95% CI [+3.00, +5.00]" in page
    assert "3 of 3 seeds above 0, 0 below" in page and "0 of 3 seeds above 0, 3 below" in page
    assert "Holm-adjusted p-values (p_holm, α = 0.05) over every test in the table" in page
    assert "seeds resampled, then images within each seed" in page
    assert "Every verdict is" not in page  # some cells do have an effect
    assert f"Between grid points ({STUDY_GRID})" in page


def test_the_report_links_each_member_s_report(study_dir: Path) -> None:
    page = study_report.write_study_report(study_dir).read_text(encoding="utf-8")
    assert f'<a href="{STUDY_MEMBERS}/{_member(0, 0)}/{REPORT}">' in page
    assert f"{_member(1, 2)} (grid point {GRID[1]}, seed 2): no {REPORT} yet" in page


def _marks(spec: Any) -> list[tuple[str, str]]:
    """(mark type, filter expression or "") of every layer anywhere in a Vega-Lite spec."""
    found: list[tuple[str, str]] = []
    if isinstance(spec, dict):
        if "mark" in spec:
            mark = spec["mark"]
            kind = mark["type"] if isinstance(mark, dict) else mark
            filters = [str(t.get("filter", "")) for t in spec.get("transform", [])]
            found.append((kind, " ".join(filters)))
        for value in spec.values():
            found += _marks(value)
    elif isinstance(spec, list):
        for value in spec:
            found += _marks(value)
    return found


def _values(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for rows in spec.get("datasets", {}).values() for row in rows]


def _check_plot_spec(spec: dict[str, Any]) -> None:
    marks = _marks(spec)
    one_seed = f"(datum.kind === '{study_report.ONE_SEED}')"
    across = f"(datum.kind === '{study_report.ACROSS_SEEDS}')"
    assert ("errorbar", across) in marks and ("point", across) in marks
    assert ("point", one_seed) in marks  # each seed's dot
    values = _values(spec)
    seeds = [row for row in values if row["kind"] == study_report.ONE_SEED]
    assert len(seeds) == len(GRID) * len(SEEDS) * len(FAMILIES)  # attribute "all" only
    assert {row["attribute"] for row in values} == {"all"}
    assert all(row["slot"] == "emphasized · seeds" for row in seeds)  # beside the interval
    # Faceted by family, the x-axis title once under the grid, not per facet.
    assert spec["vconcat"][0]["title"]["text"] == "grid point"
    facet = spec["vconcat"][0]
    assert facet["facet"]["field"] == "family"
    assert all(layer["encoding"]["x"]["title"] is None for layer in facet["spec"]["layer"][1:])


def test_the_plot_draws_each_seed_beside_its_interval(study_dir: Path) -> None:
    table, seeds = read_csv(study_dir / STUDY_TABLE), read_csv(study_dir / STUDY_SEEDS)
    _check_plot_spec(study_report.study_effect_chart(table, seeds).to_dict())
    page = study_report.write_study_report(study_dir).read_text(encoding="utf-8")
    embedded = re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', page, re.S)
    assert embedded is not None
    _check_plot_spec(json.loads(embedded.group(1)))


def test_a_study_without_any_effect_says_so(tmp_path: Path) -> None:
    study_dir = make_study(tmp_path / "quiet", verdicts={})
    page = study_report.write_study_report(study_dir).read_text(encoding="utf-8")
    assert "Every verdict is “no consistent effect”" in page
    assert page.index(HEADING) < page.index("Every verdict is") < page.index("<img")


def test_a_study_without_its_table_is_named_not_a_traceback(study_dir: Path) -> None:
    (study_dir / STUDY_TABLE).unlink()
    with pytest.raises(RunDataError, match=r"study\.csv is missing in .*sparsity"):
        study_report.write_study_report(study_dir)


# --- the dashboard's Study page -------------------------------------------------------------


def run_app(monkeypatch: pytest.MonkeyPatch, root: Path, study: str | None) -> AppTest:
    monkeypatch.setenv("IAMT_RUNS_DIR", str(root))
    app = AppTest.from_file(APP, default_timeout=60)
    app.query_params["page"] = "Study"
    if study is not None:
        app.query_params["study"] = study
    return app.run()


def texts(app: AppTest) -> str:
    parts: list[str] = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "subheader"):
        parts += [str(element.value) for element in getattr(app, kind)]
    parts += [element.value.to_string() for element in app.dataframe]
    return "\n".join(parts)


def test_the_study_page_shows_the_verdict_plot_and_tables(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = run_app(monkeypatch, study_dir.parent, study=None)  # the only study, by default
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    assert app.title[0].value == "Study"
    shown = texts(app)
    assert HEADING in shown and "Holm-adjusted" in shown
    assert "emphasized: hurts in corruption/all; no consistent effect in 3 of 4 cells." in shown
    assert "3 of 3 seeds above 0, 0 below" in shown
    assert f"Every test ({STUDY_TABLE})" in shown and f"({STUDY_GRID})" in shown
    assert f"?page=Overview&run=sparsity%2F{_member(0, 0)}" in shown
    assert len(app.get("vega_lite_chart")) == 1
    assert app.sidebar.selectbox(key="study").value == "sparsity"


def test_the_study_page_names_a_missing_table_and_a_bad_study(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (study_dir / STUDY_TABLE).unlink()
    app = run_app(monkeypatch, study_dir.parent, study="sparsity")
    assert not app.exception, [e.value for e in app.exception]
    assert any(f"`{STUDY_TABLE}` is not in `sparsity`" in i.value for i in app.info)
    app = run_app(monkeypatch, study_dir.parent, study="../etc")
    assert not app.exception
    assert any("invalid run name" in e.value for e in app.error)


def test_the_study_modules_import_no_torch() -> None:
    code = (
        "import sys, dashboards.study_report, dashboards.study_page; "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    tree = ast.parse((REPO / "dashboards" / "study_page.py").read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {name for name in imported if name.startswith("iamt")} <= {"iamt.rundir"}
