"""The dashboard: rundata loaders, chart builders, and the Streamlit app run headless (AppTest)
on a real run directory (train + evaluate, from conftest), plus the bad-data paths."""

from __future__ import annotations

import ast
import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboards import charts, rundata
from iamt.rundir import DRIFT, SEARCH_TABLE, RunDirectory

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboards" / "app.py")
PAGES = ("Runs", "Overview", "Noise and corruptions", "Adversarial", "Attention", "Run info")
TORCH_LAYERS = {"torch", "ray", "robustness", "cluster"}  # what the dashboard must not import


@pytest.fixture
def runs_dir(evaluated_run_dir: Path, tmp_path: Path) -> Path:
    """A runs directory holding a copy of the session's evaluated run as `tiny`."""
    root = tmp_path / "runs"
    shutil.copytree(evaluated_run_dir, root / "tiny")
    return root


def run_app(
    monkeypatch: pytest.MonkeyPatch, root: Path, page: str, run: str | None = "tiny"
) -> AppTest:
    monkeypatch.setenv("IAMT_RUNS_DIR", str(root))
    app = AppTest.from_file(APP, default_timeout=60)
    app.query_params["page"] = page
    if run is not None:
        app.query_params["run"] = run
    return app.run()


def texts(app: AppTest) -> str:
    """Everything the page shows as text: markdown, captions, alerts, metrics, tables."""
    parts: list[str] = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title"):
        parts += [str(element.value) for element in getattr(app, kind)]
    parts += [f"{m.label} {m.value}" for m in app.metric]
    parts += [element.value.to_string() for element in app.dataframe]
    return "\n".join(parts)


# --- rundata ------------------------------------------------------------------------------


def test_safe_run_dir_accepts_a_plain_name(runs_dir: Path) -> None:
    assert rundata.safe_run_dir(runs_dir, "tiny") == (runs_dir / "tiny").resolve()


@pytest.mark.parametrize(
    "name", ["../tiny", "..", ".", "", "/etc", "tiny/../..", "a/b", "..\\x", "~root"]
)
def test_safe_run_dir_refuses_paths(runs_dir: Path, name: str) -> None:
    with pytest.raises(rundata.RunDataError, match="invalid run name"):
        rundata.safe_run_dir(runs_dir, name)


def test_safe_run_dir_refuses_a_symlink_leading_outside(runs_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (runs_dir / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(rundata.RunDataError, match=r"'escape'.*outside"):
        rundata.safe_run_dir(runs_dir, "escape")
    with pytest.raises(rundata.RunDataError, match="no run named 'absent'"):
        rundata.safe_run_dir(runs_dir, "absent")
    assert "escape" not in set(rundata.list_runs(runs_dir)["name"])


def test_list_runs(runs_dir: Path) -> None:
    (runs_dir / "not_a_run").mkdir()
    (runs_dir / "fresh").mkdir()
    (runs_dir / "fresh" / "config.yaml").write_text("data:\n  name: digits\n")
    table = rundata.list_runs(runs_dir).set_index("name")
    assert set(table.index) == {"tiny", "fresh"}
    tiny = table.loc["tiny"]
    assert tiny["status"] == "done"
    assert tiny["jobs_done"] == tiny["jobs_total"] > 0
    assert tiny["progress"] == 1.0
    assert tiny["dataset"] == "shapes"
    assert tiny["variants"] == "emphasized, normal"
    assert table.loc["fresh", "status"] == "configured"
    assert table.loc["fresh", "dataset"] == "digits"
    assert rundata.list_runs(runs_dir / "missing").empty


def test_read_csv_types_and_known_files(runs_dir: Path) -> None:
    summary = rundata.read_csv(runs_dir / "tiny" / "summary.csv")
    assert summary["accuracy"].dtype.kind == "f"
    assert str(summary["sanity_all"].dtype) == "boolean"
    run = RunDirectory(runs_dir / "tiny")
    for name in rundata.KNOWN_CSVS:
        table = run.read_csv(name)
        if name == SEARCH_TABLE:  # only a run whose config asks for an emphasis search has one
            assert table is None
            continue
        assert table is not None, name
        assert set(rundata.SCHEMAS[name].columns) <= set(table.columns), name
    drift = run.read_csv(DRIFT)
    assert drift is not None and drift["mask_cosine"].dtype.kind == "f"
    (runs_dir / "tiny" / "drift.csv").unlink()  # optional: older runs lack it
    assert run.read_csv(DRIFT) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("job_id,variant\n1,normal\n", "lacks the column"),
        (None, "truncated"),  # the real file cut in the middle of a line
        (None, "line"),  # the real file cut at a line end: required cells empty
        ("__numeric__", "not numeric"),
    ],
)
def test_read_csv_errors_name_the_file(
    runs_dir: Path, content: str | None, message: str, request: pytest.FixtureRequest
) -> None:
    path = runs_dir / "tiny" / "results.csv"
    text = path.read_text()
    if content is None and message == "truncated":
        content = text[: len(text) // 2]
    elif content is None:
        # A data line cut after its 8th field, then ended: a short row.
        header, first = list(csv.reader(io.StringIO(text)))[:2]
        content = _csv_text([header, first[:8]])
    elif content == "__numeric__":
        header, first = list(csv.reader(io.StringIO(text)))[:2]
        seed = header.index("seed")
        content = _csv_text([header, [*first[:seed], "abc", *first[seed + 1 :]]])
    path.write_text(content)
    with pytest.raises(rundata.RunDataError, match=f"results.csv.*{message}|{message}.*") as info:
        rundata.read_csv(path)
    assert "results.csv" in str(info.value)


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def test_read_manifest_config_masks(runs_dir: Path) -> None:
    run = runs_dir / "tiny"
    manifest = RunDirectory(run).read_manifest()
    assert manifest is not None and manifest["status"] == "done"
    assert "name: tiny" in (RunDirectory(run).read_config_text() or "")
    samples = rundata.read_masks(run)
    assert samples is not None
    assert samples.images.ndim == 4 and samples.channels > 0
    assert set(samples.variants) == {"normal", "emphasized"}
    assert ("emphasized", samples.attributes[0]) in samples.masks
    picture = rundata.mask_image(samples.masks[("normal", "shape")][0, 0], 64)
    assert picture.dtype.name == "uint8" and picture.shape[0] >= 56
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(rundata.RunDataError, match=r"manifest\.json"):
        RunDirectory(run).read_manifest()
    RunDirectory(run).masks.write_bytes(b"garbage")
    with pytest.raises(rundata.RunDataError, match=r"samples\.safetensors"):
        rundata.read_masks(run)


# --- charts -------------------------------------------------------------------------------


def axis_titles(spec: Any) -> list[tuple[str, str]]:
    """(channel, title) of every x/y encoding anywhere in a Vega-Lite spec."""
    found: list[tuple[str, str]] = []
    if isinstance(spec, dict):
        encoding = spec.get("encoding")
        if isinstance(encoding, dict):
            for channel in ("x", "y"):
                title = (encoding.get(channel) or {}).get("title")
                if isinstance(title, str):
                    found.append((channel, title))
        for value in spec.values():
            found += axis_titles(value)
    elif isinstance(spec, list):
        for value in spec:
            found += axis_titles(value)
    return found


def test_chart_builders_have_axis_titles_with_units(runs_dir: Path) -> None:
    run = runs_dir / "tiny"
    summary = rundata.read_csv(run / "summary.csv")
    results = rundata.read_csv(run / "results.csv")
    clean = rundata.read_csv(run / "clean.csv")
    importance = rundata.read_csv(run / "importance.csv")
    drift = rundata.read_csv(run / "drift.csv")
    built = {
        "clean": charts.clean_accuracy_chart(clean),
        "headline": charts.headline_chart(summary),
        "noise": charts.strength_curves_chart(summary, "noise"),
        "corruption": charts.strength_curves_chart(summary, "corruption"),
        "heatmap": charts.difference_heatmap(summary),
        "robust": charts.robust_accuracy_chart(summary),
        "median": charts.median_distance_chart(results),
        "transfer": charts.transfer_matrix_chart(results),
        "importance": charts.importance_heatmap(importance),
        "drift": charts.drift_chart(drift),
    }
    for name, chart in built.items():
        assert isinstance(chart, alt.TopLevelMixin), name
        titles = dict(axis_titles(chart.to_dict()))
        assert {"x", "y"} <= set(titles), (name, titles)
    assert "fraction" in dict(axis_titles(built["clean"].to_dict()))["y"]
    robust_x = [t for c, t in axis_titles(built["robust"].to_dict()) if c == "x"]
    assert any("L∞, [0,1] pixel units" in t for t in robust_x)
    assert any("McNemar p" in str(t) for t in _tooltips(built["headline"].to_dict()))
    assert "mask cosine" in dict(axis_titles(built["drift"].to_dict()))["y"]
    rho = charts.drift_chart(drift, measure="importance_rank_correlation", family="noise")
    assert "Spearman" in dict(axis_titles(rho.to_dict()))["y"]
    # An empty frame gives a placeholder chart, not an exception.
    assert charts.headline_chart(summary.iloc[0:0]).to_dict()


def _tooltips(spec: Any) -> list[Any]:
    if isinstance(spec, dict):
        out = [t.get("title") for t in spec.get("tooltip", []) if isinstance(t, dict)]
        return out + [x for v in spec.values() for x in _tooltips(v)]
    if isinstance(spec, list):
        return [x for v in spec for x in _tooltips(v)]
    return []


def test_drift_curves_pool_shards_and_attributes_by_n() -> None:
    drift = pd.DataFrame(
        {
            "family": ["noise"] * 4,
            "perturbation": ["gaussian"] * 4,
            "strength": [0.1] * 4,
            "variant": ["normal"] * 4,
            "attribute": ["shape", "shape", "size", "size"],
            "mask_cosine": [0.9, 0.6, 1.0, 0.5],
            "importance_rank_correlation": [1.0, 0.5, float("nan"), 0.0],
            "n": [30, 10, 30, 10],
        }
    )
    pooled = charts.drift_curves(drift)
    assert pooled["mask_cosine"].tolist() == pytest.approx([(27 + 6 + 30 + 5) / 80])
    shape = charts.drift_curves(drift, attribute="shape")
    assert shape["mask_cosine"].tolist() == pytest.approx([0.825])
    rho = charts.drift_curves(drift, measure="importance_rank_correlation")
    assert rho["importance_rank_correlation"].tolist() == pytest.approx([(30 + 5) / 50])
    assert charts.drift_curves(drift, family="corruption").empty
    assert charts.drift_chart(drift.iloc[0:0]).to_dict()  # a placeholder, not an exception
    with pytest.raises(ValueError, match="unknown drift measure"):
        charts.drift_curves(drift, measure="drift")


def test_transfer_matrix_has_a_whitebox_diagonal(runs_dir: Path) -> None:
    matrix = charts.transfer_matrix(rundata.read_csv(runs_dir / "tiny" / "results.csv"))
    pairs = set(zip(matrix["source_variant"], matrix["variant"], strict=True))
    assert {("normal", "normal"), ("normal", "emphasized"), ("emphasized", "normal")} <= pairs


def test_dashboards_import_neither_torch_nor_ray() -> None:
    code = (
        "import sys, dashboards.report, dashboards.rundata, dashboards.charts, "
        "dashboards.verdict; "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, "
        "[m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')]"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # The app (run by Streamlit as a script) reads runs through the torch-free modules only.
    tree = ast.parse((REPO / "dashboards" / "app.py").read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    project = {name for name in imported if name.split(".")[0] in TORCH_LAYERS | {"iamt"}}
    assert project <= {"iamt.rundir", "iamt.vocabulary"}, project


# --- the app ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_on_a_real_run(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    app = run_app(monkeypatch, runs_dir, page)
    assert not app.exception, [e.value for e in app.exception]
    assert app.title[0].value == page
    # Only the sanity checklist may raise an alarm on this tiny, barely trained model.
    assert all("Sanity checks FAILED" in e.value for e in app.error), [e.value for e in app.error]


def test_overview_shows_clean_accuracy_ci_and_mce(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = run_app(monkeypatch, runs_dir, "Overview")
    shown = texts(app)
    clean = rundata.read_csv(runs_dir / "tiny" / "clean.csv").iloc[0]
    assert f"[{clean['ci_low']:.3f}, {clean['ci_high']:.3f}]" in shown
    summary = rundata.read_csv(runs_dir / "tiny" / "summary.csv")
    head = summary[(summary["level"] == "family") & summary["difference"].notna()]
    row = head[head["family"] == "noise"].iloc[0]
    assert f"[{row['diff_ci_low']:+.4f}, {row['diff_ci_high']:+.4f}]" in shown
    tables = pd.concat([d.value for d in app.dataframe], ignore_index=True)
    assert clean["accuracy"] in set(tables["accuracy"].dropna())
    assert row["mcnemar_p"] in set(tables["mcnemar_p"].dropna())
    labels = {m.label: m.value for m in app.metric}
    assert labels["mCE (normal)"] == "1.000"
    assert "relative mCE (emphasized)" in labels


def test_adversarial_page_flags_failed_sanity_checks(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary_path = runs_dir / "tiny" / "summary.csv"
    summary = pd.read_csv(summary_path, dtype=str, keep_default_na=False)
    rows = (summary["level"] == "family") & (summary["family"] == "adversarial")
    summary.loc[rows, "sanity_pgd_beats_fgsm"] = "False"
    summary.to_csv(summary_path, index=False)
    app = run_app(monkeypatch, runs_dir, "Adversarial")
    assert not app.exception
    assert any("pgd_beats_fgsm" in e.value for e in app.error)


def test_attention_page_shows_drift_and_says_when_a_run_has_none(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = run_app(monkeypatch, runs_dir, "Attention")
    assert not app.exception, [e.value for e in app.exception]
    assert "Attention drift vs strength" in [h.value for h in app.subheader]
    assert {"Family", "Attribute", "Measure"} <= {box.label for box in app.selectbox}
    assert "Mask cosine" in texts(app)
    (runs_dir / "tiny" / "drift.csv").unlink()  # a run evaluated before drift existed
    app = run_app(monkeypatch, runs_dir, "Attention")
    assert not app.exception and not app.error
    assert "`drift.csv` is missing" in texts(app)


def test_runs_page_lists_the_run_and_empty_dir_shows_guidance(
    runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = run_app(monkeypatch, runs_dir, "Runs", run=None)
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["name"]) == ["tiny"] and table["status"].iloc[0] == "done"
    empty = tmp_path / "empty"
    empty.mkdir()
    for page in ("Runs", "Overview"):
        app = run_app(monkeypatch, empty, page, run=None)
        assert not app.exception
        assert "make demo" in texts(app)


@pytest.mark.parametrize("filename", ["results.csv", "summary.csv"])
@pytest.mark.parametrize("page", ["Overview", "Adversarial"])
def test_truncated_csv_shows_an_error_naming_the_file(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, filename: str, page: str
) -> None:
    path = runs_dir / "tiny" / filename
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    app = run_app(monkeypatch, runs_dir, page)
    assert not app.exception, [e.value for e in app.exception]
    errors = [e.value for e in app.error]
    if page == "Overview" and filename == "results.csv":
        return  # the overview does not read results.csv
    assert any(filename in e and "truncated" in e for e in errors), errors


@pytest.mark.parametrize("name", ["../../etc", "..", "/etc", "tiny/../../x"])
def test_traversal_run_name_shows_an_error(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    app = run_app(monkeypatch, runs_dir, "Run info", run=name)
    assert not app.exception
    assert any("invalid run name" in e.value for e in app.error)
    assert not app.code  # no config (of any run, or from outside) was shown
    assert not app.title  # the page itself did not render


def test_in_progress_run_shows_what_exists(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = runs_dir / "tiny"
    for name in ("results.csv", "summary.csv", "failures.csv", "timings.csv"):
        (run / name).unlink()
    manifest = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(manifest.replace('"status": "done"', '"status": "running"'))
    for page in PAGES:
        app = run_app(monkeypatch, runs_dir, page)
        assert not app.exception, (page, [e.value for e in app.exception])
        assert not app.error, (page, [e.value for e in app.error])
    assert "in progress" in texts(run_app(monkeypatch, runs_dir, "Overview"))
    assert os.environ.get("IAMT_RUNS_DIR") == str(runs_dir)
