"""The dashboard: rundata loaders, chart builders, and the Streamlit app run headless (AppTest)
on a real run directory (train + evaluate, from conftest), plus the bad-data paths."""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboards import charts, compare, launch, rundata
from iamt.rundir import DRIFT, RESULTS, SEARCH_COLUMNS, SEARCH_REPORT, SEARCH_TABLE, RunDirectory
from iamt.vocabulary import NORMAL

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboards" / "app.py")
PAGES = ("Runs", "Study", "Overview", "Noise and corruptions", "Adversarial", "Attention")
PAGES += ("Search", "Compare", "Run info")
TORCH_LAYERS = {"torch", "ray", "robustness", "cluster"}  # what the dashboard must not import
# The Streamlit modules of the dashboard: the app script and the modules of its pages.
STREAMLIT_MODULES = ("app.py", "widgets.py", "search_page.py", "compare_page.py", "study_page.py")


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
    "name",
    ["../tiny", "..", ".", "", "/etc", "tiny/../..", "a/b/c", "tiny/..", "..\\x", "~root", "a/"],
)
def test_safe_run_dir_refuses_paths(runs_dir: Path, name: str) -> None:
    with pytest.raises(rundata.RunDataError, match="invalid run name"):
        rundata.safe_run_dir(runs_dir, name)


def test_a_study_member_is_named_study_slash_member(runs_dir: Path, tmp_path: Path) -> None:
    member = _study(runs_dir, "study", ["b", "a"])[0]
    assert rundata.safe_run_dir(runs_dir, "study/a") == member.resolve()
    assert rundata.run_name(runs_dir, member) == "study/a"
    assert rundata.run_name(runs_dir, runs_dir / "tiny") == "tiny"
    with pytest.raises(rundata.RunDataError, match="no run named 'study/c'"):
        rundata.safe_run_dir(runs_dir, "study/c")
    outside = tmp_path / "outside"
    outside.mkdir()
    (runs_dir / "study" / "members" / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(rundata.RunDataError, match="resolves outside"):
        rundata.safe_run_dir(runs_dir, "study/escape")


def _study(runs_dir: Path, name: str, members: list[str]) -> list[Path]:
    """A study directory whose members are runs (their manifest only), sorted by name."""
    paths = []
    for member in members:
        path = runs_dir / name / rundata.STUDY_MEMBERS / member
        path.mkdir(parents=True)
        shutil.copy(runs_dir / "tiny" / "manifest.json", path / "manifest.json")
        paths.append(path)
    return sorted(paths)


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
    assert tiny["variants"] == "normal, emphasized"  # variant_order: normal first
    assert table.loc["fresh", "status"] == "configured"
    assert table.loc["fresh", "dataset"] == "digits"
    assert rundata.list_runs(runs_dir / "missing").empty


def test_list_runs_puts_a_study_s_members_under_it(runs_dir: Path) -> None:
    _study(runs_dir, "study", ["b", "a"])
    table = rundata.list_runs(runs_dir)
    names, kinds = list(table["name"]), list(table["kind"])
    at = names.index("study")
    assert names[at : at + 3] == ["study", "study/a", "study/b"]
    assert kinds[at : at + 3] == ["study", "member", "member"]
    assert table.set_index("name").loc["study/a", "status"] == "done"
    assert rundata.run_names(table) == [n for n in names if n != "study"]


def test_the_runs_variants_come_from_what_the_sweep_evaluated(runs_dir: Path) -> None:
    """searched and the search-front variants appear once the sweep measured them, although
    the manifest (written at training) names the trained variants only."""
    run = runs_dir / "tiny"
    results = pd.read_csv(run / RESULTS, dtype=str, keep_default_na=False)
    emphasized = results[results["variant"] == "emphasized"]
    extra = [emphasized.assign(variant=name) for name in ("searched", "front-10", "front-2")]
    pd.concat([results, *extra]).to_csv(run / RESULTS, index=False)
    expected = ["normal", "emphasized", "front-2", "front-10", "searched"]
    assert rundata.run_variants(run) == expected
    assert rundata.list_runs(runs_dir).set_index("name").loc["tiny", "variants"] == ", ".join(
        expected
    )


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
    assert picture.dtype.name == "uint8" and picture.shape == (64, 64)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(rundata.RunDataError, match=r"manifest\.json"):
        RunDirectory(run).read_manifest()
    RunDirectory(run).masks.write_bytes(b"garbage")
    with pytest.raises(rundata.RunDataError, match=r"samples\.safetensors"):
        rundata.read_masks(run)


# --- charts -------------------------------------------------------------------------------


def axis_titles(spec: Any) -> list[tuple[str, str]]:
    """(channel, title) of every x/y encoding anywhere in a Vega-Lite spec; a title set below a
    faceted grid (`charts.one_x_title`) is the grid's x title."""
    found: list[tuple[str, str]] = []
    if isinstance(spec, dict):
        title = spec.get("title")
        if isinstance(title, dict) and title.get("orient") == "bottom":
            found.append(("x", title["text"]))
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


FACETED_X_TITLES = {
    "noise": ("strength_curves_chart", "noise", "noise strength (σ / fraction"),
    "corruption": ("strength_curves_chart", "corruption", "severity (ImageNet-C level, 1–5)"),
    "heatmap": ("difference_heatmap", "corruption", "severity (ImageNet-C level, 1–5)"),
}


def test_a_faceted_chart_titles_its_x_axis_once(runs_dir: Path) -> None:
    """Each facet repeated its long x title and they ran into each other: the title is now
    given once, under the grid (the robust accuracy chart: once per norm)."""
    summary = rundata.read_csv(runs_dir / "tiny" / "summary.csv")
    drift = rundata.read_csv(runs_dir / "tiny" / "drift.csv")
    assert summary["perturbation"].nunique() > 3  # several facets: a repeat could show
    for builder, family, title in FACETED_X_TITLES.values():
        text = json.dumps(getattr(charts, builder)(summary, family).to_dict(), ensure_ascii=False)
        assert text.count(title) == 1, (builder, family)
    robust = json.dumps(charts.robust_accuracy_chart(summary).to_dict(), ensure_ascii=False)
    for norm in ("L∞", "L2"):
        assert robust.count(f"ε ({norm}, [0,1] pixel units)") == 1, norm
    drifting = json.dumps(charts.drift_chart(drift).to_dict(), ensure_ascii=False)
    assert drifting.count("strength (noise σ… / severity 1–5 / ε)") == 1


def _colour_scales(spec: Any) -> list[dict[str, str]]:
    """{domain value: colour} of every colour scale over `variant` in a Vega-Lite spec."""
    found: list[dict[str, str]] = []
    if isinstance(spec, dict):
        colour = (spec.get("encoding") or {}).get("color") or {}
        scale = colour.get("scale") or {}
        if colour.get("field") == "variant" and "range" in scale:
            found.append(dict(zip(scale["domain"], scale["range"], strict=True)))
        found += [x for value in spec.values() for x in _colour_scales(value)]
    elif isinstance(spec, list):
        found += [x for value in spec for x in _colour_scales(value)]
    return found


def test_every_chart_gives_a_variant_the_same_colour_and_normal_the_neutral_one(
    runs_dir: Path,
) -> None:
    run = runs_dir / "tiny"
    summary = rundata.read_csv(run / "summary.csv")
    results = rundata.read_csv(run / "results.csv")
    clean = rundata.read_csv(run / "clean.csv")
    variants = [*rundata.run_variants(run), "searched", "front-1"]
    built = [
        charts.clean_accuracy_chart(clean, variants),
        charts.headline_chart(summary, variants=variants),  # normal left out: no shift
        charts.strength_curves_chart(summary, "noise", variants=variants),
        charts.robust_accuracy_chart(summary, variants=variants),
        charts.median_distance_chart(results, variants),
        charts.drift_chart(rundata.read_csv(run / "drift.csv"), variants=variants),
    ]
    scales = [scale for chart in built for scale in _colour_scales(chart.to_dict())]
    assert len(scales) >= len(built)
    assert all(scale == scales[0] for scale in scales), scales
    assert scales[0][NORMAL] == charts.NEUTRAL == "#7f7f7f"
    others = [scales[0][name] for name in ("emphasized", "front-1", "searched")]
    assert len(set(others)) == 3 and charts.NEUTRAL not in others
    assert scales[0]["emphasized"] == charts.VARIANT_PALETTE[0]  # variant_order: by name
    # Without the run's list a chart colours what it has, normal still neutral.
    alone = _colour_scales(charts.clean_accuracy_chart(clean).to_dict())[0]
    assert alone == {NORMAL: charts.NEUTRAL, "emphasized": charts.VARIANT_PALETTE[0]}


def search_table(evaluate_front: bool = True) -> pd.DataFrame:
    """search.csv as `iamt search` and the sweep leave it (points; identity first): the sweep
    variants normal and searched with their test-split numbers, and with
    `search.evaluate_front` the other front member as front-1."""
    specs = ["identity", "power:gamma=2", "suppress:beta=0.5,k=2", "topk:alpha=2,k=4"]
    table = pd.DataFrame({column: [float("nan")] * 4 for column in SEARCH_COLUMNS})
    table["spec"] = specs
    table["clean_accuracy"] = [99.0, 96.0, 98.0, 98.5]
    table["robust_accuracy"] = [60.0, 62.0, 59.0, 61.0]
    table["clean_cost"] = [0.0, 3.0, 1.0, 0.5]
    table["robustness_gain"] = [0.0, 2.0, -1.0, 1.0]
    table["score"] = table["robustness_gain"]
    table["pareto"] = [True, True, False, True]
    table["chosen"] = [False, False, False, True]
    nan = float("nan")
    table["variant"] = ["normal", "front-1" if evaluate_front else "", "", "searched"]
    table["test_clean_cost"] = [0.0, 2.5 if evaluate_front else nan, nan, 0.8]
    table["test_robustness_gain"] = [0.0, 2.2 if evaluate_front else nan, nan, 0.4]
    return table


def older_search_table() -> pd.DataFrame:
    """search.csv written before the sweep re-measured anything on test: no such columns."""
    return search_table().drop(columns=["variant", *charts.SEARCH_TEST_COLUMNS])


def write_search(run_dir: Path, table: pd.DataFrame) -> None:
    """A search's files in a run: `table` as search.csv, and its search.json."""
    table.to_csv(run_dir / SEARCH_TABLE, index=False)
    chosen = {"spec": "topk:alpha=2,k=4", "score": 1.0, "clean_cost": 0.5}
    report = {"split": "val", "n": 64, "conditions": ["fog@3", "gaussian@0.1"], "chosen": chosen}
    report |= {"rule": "the largest worst-family gain", "variant": "searched"}
    (run_dir / SEARCH_REPORT).write_text(json.dumps({**report, "helps_on_validation": True}))


def test_the_search_charts_label_every_candidate_and_draw_the_front_twice() -> None:
    table = search_table()
    pareto = charts.pareto_chart(table).to_dict()
    layers = [layer for layer in pareto["layer"] if "tooltip" in layer.get("encoding", {})]
    assert layers, "no layer has a tooltip"
    points = layers[0]
    assert len(pareto["datasets"][points["data"]["name"]]) == len(table)  # every candidate
    assert {"transform", "sweep variant"} <= {t.get("title") for t in _tooltip_list(points)}
    assert charts.front_remeasured(table)
    twice = charts.front_on_test_chart(table, ["normal", "emphasized", "front-1", "searched"])
    spec = twice.to_dict()
    rows = [row for data in spec["datasets"].values() for row in data if "split" in row]
    measured = {(row["variant"], row["split"]): (row["cost"], row["gain"]) for row in rows}
    assert measured[("searched", "validation")] == (0.5, 1.0)
    assert measured[("searched", "test")] == (0.8, 0.4)
    assert measured[("front-1", "test")] == (2.5, 2.2)
    assert ("", "test") not in measured  # a dominated candidate the sweep did not measure
    colours = _colour_scales(spec)[0]
    assert colours[NORMAL] == charts.NEUTRAL and colours["emphasized"] == charts.VARIANT_PALETTE[0]


def test_without_evaluate_front_only_the_chosen_one_is_drawn_on_test() -> None:
    table = search_table(evaluate_front=False)
    assert not charts.front_remeasured(table)
    spec = charts.front_on_test_chart(table).to_dict()
    assert "search.evaluate_front off" in json.dumps(spec)
    rows = [row for data in spec["datasets"].values() for row in data if "split" in row]
    assert {row["variant"] for row in rows} == {"normal", "searched"}


@pytest.mark.parametrize("columns", ["absent", "empty"])
def test_a_search_without_test_numbers_says_so(columns: str) -> None:
    table = older_search_table()
    if columns == "empty":  # the columns exist (read through the schema) but hold nothing
        table = table.assign(variant=pd.NA, test_clean_cost=pd.NA, test_robustness_gain=pd.NA)
    assert not charts.front_remeasured(table) and charts.measured_on_test(table).empty
    placeholder = json.dumps(charts.front_on_test_chart(table).to_dict())
    assert "not re-measured on test" in placeholder
    assert charts.pareto_chart(table).to_dict()["layer"]  # validation alone still draws


def _tooltip_list(layer: dict[str, Any]) -> list[dict[str, Any]]:
    tooltip = layer["encoding"]["tooltip"]
    return tooltip if isinstance(tooltip, list) else [tooltip]


def test_the_mask_gallery_draws_every_variant_at_one_size(runs_dir: Path) -> None:
    samples = rundata.read_masks(runs_dir / "tiny")
    importance = rundata.read_csv(runs_dir / "tiny" / "importance.csv")
    assert samples is not None
    top = importance[(importance["attribute"] == "shape") & (importance["rank"] == 1)]
    channel = int(top["channel"].iloc[0])  # one the emphasized variant scales up
    # An odd size on purpose: no integer upscale of 8×8 masks or 32×32 images reaches it.
    gallery = rundata.mask_gallery(
        samples, "shape", channel, ["normal", "emphasized", "absent"], count=5, size=50
    )
    assert set(gallery.masks) == {"normal", "emphasized"}
    shapes = {picture.shape for masks in gallery.masks.values() for picture in masks}
    assert shapes == {(50, 50)} and all(len(m) == 5 for m in gallery.masks.values())
    assert {image.shape for image in gallery.images} == {(50, 50, 3)}
    normal, emphasized = (np.stack(gallery.masks[v]) for v in ("normal", "emphasized"))
    assert emphasized.max() == 255 > normal.max()  # one brightness scale: emphasis shows


def test_the_dashboard_serves_with_the_toolbar_in_viewer_mode() -> None:
    """No Deploy button: Streamlit's developer options are hidden for the readers."""
    command = launch.streamlit_command(8600)
    flag = command.index("--client.toolbarMode")
    assert command[flag + 1] == "viewer"
    from streamlit import config

    # The installed Streamlit knows the option (an unknown one raises); the browser test checks
    # that the served page has no Deploy button.
    assert config.get_option("client.toolbarMode") in {"auto", "developer", "viewer", "minimal"}


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
        "dashboards.verdict, dashboards.compare; "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, "
        "[m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')]"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # The app (run by Streamlit as a script) and its pages read runs through the torch-free
    # modules only.
    for module in STREAMLIT_MODULES:
        tree = ast.parse((REPO / "dashboards" / module).read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        project = {name for name in imported if name.split(".")[0] in TORCH_LAYERS | {"iamt"}}
        assert project <= {"iamt.rundir", "iamt.vocabulary"}, (module, project)


# --- comparing two runs -------------------------------------------------------------------


def _part_rows(rows: list[tuple[str, str, float, str]], variant: str = "normal") -> pd.DataFrame:
    """Part-file rows (as read: text) of one variant and attribute: (family, perturbation, ε,
    outcomes), every shard starting at image 0."""
    return pd.DataFrame(
        [
            {
                "job_id": f"job{i}",
                "variant": variant,
                "attribute": "shape",
                "family": family,
                "perturbation": perturbation,
                "severity": "",
                "epsilon": str(epsilon),
                "source_variant": "",
                "shard_start": "0",
                "n": str(len(outcomes)),
                "outcomes": outcomes,
            }
            for i, (family, perturbation, epsilon, outcomes) in enumerate(rows)
        ]
    )


def test_paired_differences_match_a_hand_computed_table() -> None:
    """Run A and run B on the same 4 images under 3 noise conditions (+ one only A has, and
    one whose shards differ in length: both left out). By hand: A right on 3 of 12 pairs, B on
    8; B − A = 5/12; A-only 1, B-only 6: McNemar p = 2·P(X ≤ 1 | 7, ½) = 2·8/128."""
    a = _part_rows(
        [
            ("noise", "gaussian", 0.1, "1100"),
            ("noise", "gaussian", 0.2, "1000"),
            ("noise", "gaussian", 0.3, "0000"),
            ("noise", "impulse", 0.1, "1111"),  # not in B
            ("noise", "shot", 0.1, "11"),  # another length in B: not the same images
        ]
    )
    b = _part_rows(
        [
            ("noise", "gaussian", 0.1, "1010"),
            ("noise", "gaussian", 0.2, "1001"),
            ("noise", "gaussian", 0.3, "1111"),
            ("noise", "shot", 0.1, "1111"),
        ]
    )
    table = compare.paired_differences(a, b, seed=1)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["variant"], row["family"], row["attribute"]) == ("normal", "noise", "shape")
    assert row["method"] == compare.PAIRED and row["n"] == 12
    assert row["accuracy_a"] == pytest.approx(3 / 12)
    assert row["accuracy_b"] == pytest.approx(8 / 12)
    assert row["difference"] == pytest.approx(5 / 12)
    assert row["mcnemar_p"] == pytest.approx(16 / 128)
    # Per image, Σ(B − A) over the 3 conditions is 1, 0, 2, 2: resampling images, a replicate
    # is their mean ÷ 3, so the interval lies in [0, 2/3] and around 5/12.
    assert 0 <= row["ci_low"] < 5 / 12 < row["ci_high"] <= 2 / 3
    again = compare.paired_differences(a, b, seed=1)
    assert again.equals(table)  # seeded: the same interval every time


def test_a_paired_interval_resamples_images_not_pairs() -> None:
    """B gains on images 0 and 1 under one condition and on 2 and 3 under the other: the pairs
    differ (a pair bootstrap would spread), but every image gains 1 of 2, so resampling images
    cannot move the difference and the interval is the point."""
    a = _part_rows([("noise", "gaussian", 0.1, "0000"), ("noise", "gaussian", 0.2, "0000")])
    b = _part_rows([("noise", "gaussian", 0.1, "1100"), ("noise", "gaussian", 0.2, "0011")])
    row = compare.paired_differences(a, b).iloc[0]
    assert row["difference"] == pytest.approx(0.5)
    assert row["ci_low"] == pytest.approx(0.5) and row["ci_high"] == pytest.approx(0.5)


def test_unpaired_differences_use_newcombe_s_interval() -> None:
    """Newcombe (1998), Table II, examples (a) 56/70 − 48/80 and (b) 9/10 − 3/10, method 10:
    0.0524 to 0.3339 and 0.1705 to 0.8090; counts pooled over a group's rows."""
    assert compare.newcombe_interval(48, 80, 56, 70) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert compare.newcombe_interval(3, 10, 9, 10) == pytest.approx((0.1705, 0.8090), abs=5e-5)
    keys = {"variant": "normal", "family": "clean", "attribute": "shape"}
    results_a = pd.DataFrame([{**keys, "n": 40, "correct": 24}, {**keys, "n": 40, "correct": 24}])
    results_b = pd.DataFrame([{**keys, "n": 70, "correct": 56}])
    row = compare.unpaired_differences(results_a, results_b).iloc[0]
    assert row["method"] == compare.UNPAIRED and row["difference"] == pytest.approx(0.2)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert pd.isna(row["mcnemar_p"])


def test_compare_runs_pairs_only_on_the_same_test_set(runs_dir: Path) -> None:
    copy = runs_dir / "copy"
    shutil.copytree(runs_dir / "tiny", copy)
    same = compare.compare_runs(runs_dir / "tiny", copy)
    assert same.method == compare.PAIRED and "same test set" in same.reason
    assert (same.table["difference"] == 0).all() and (same.table["mcnemar_p"] == 1).all()
    variants = set(same.table["variant"])
    assert variants == {"normal", "emphasized"}
    assert {"clean", "noise", "corruption", "adversarial", "transfer"} <= set(same.table["family"])
    # n_train sizes the training split only: still the same test images.
    config = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(config.replace("n_train: 256", "n_train: 128"))
    assert compare.test_set_fingerprint(copy) == compare.test_set_fingerprint(runs_dir / "tiny")
    # Another seed draws other test images: unpaired, from results.csv.
    (copy / "config.yaml").write_text(config.replace("seed: 3", "seed: 4", 1))
    other = compare.compare_runs(runs_dir / "tiny", copy)
    assert other.method == compare.UNPAIRED and "different test sets" in other.reason
    assert (other.table["difference"] == 0).all() and (other.table["ci_low"] < 0).all()


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


@pytest.mark.parametrize("search", ["front", "chosen only", "older"])
def test_search_page_shows_rule_choice_front_and_table(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, search: str
) -> None:
    app = run_app(monkeypatch, runs_dir, "Search")
    assert not app.exception and not app.error
    assert "No emphasis search yet (`search.csv`" in texts(app)  # the fixture searched not
    tables = {
        "front": search_table(),
        "chosen only": search_table(evaluate_front=False),
        "older": older_search_table(),
    }
    write_search(runs_dir / "tiny", tables[search])
    app = run_app(monkeypatch, runs_dir, "Search")
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    shown = texts(app)
    assert "the largest worst-family gain" in shown
    assert "Chosen: `topk:alpha=2,k=4`" in shown and "variant `searched`" in shown
    table = app.dataframe[0].value
    assert list(table["spec"]) == list(search_table()["spec"])
    drawn = len(app.get("vega_lite_chart"))  # the Pareto front, then the front on test
    assert drawn == {"front": 2, "chosen only": 2, "older": 1}[search]
    assert ("not re-measured on the test split" in shown) == (search != "front")
    if search == "older":
        assert "test_clean_cost" not in table.columns  # no empty columns shown
    else:
        assert list(table.columns[:4]) == ["spec", "variant", "clean_cost", "test_clean_cost"]


def test_compare_page_pairs_a_run_with_a_study_member(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    member = runs_dir / "study" / rundata.STUDY_MEMBERS / "a"
    shutil.copytree(runs_dir / "tiny", member)
    app = run_app(monkeypatch, runs_dir, "Compare")
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    against = next(box for box in app.selectbox if box.label.startswith("Compare against"))
    assert against.value == "study/a" and "study" not in against.options  # a study is no run
    assert app.success and "Paired differences" in app.success[0].value
    table = app.dataframe[0].value
    assert set(table["method"]) == {compare.PAIRED} and (table["difference"] == 0).all()
    assert len(app.get("vega_lite_chart")) == 1
    # Another test set: the page says it shows unpaired differences.
    config = (member / "config.yaml").read_text()
    (member / "config.yaml").write_text(config.replace("seed: 3", "seed: 4", 1))
    app.query_params["against"] = "study/a"
    app = run_app(monkeypatch, runs_dir, "Compare")
    assert not app.exception and not app.error
    assert app.warning and app.warning[0].value.startswith("Unpaired differences")
    assert set(app.dataframe[0].value["method"]) == {compare.UNPAIRED}
