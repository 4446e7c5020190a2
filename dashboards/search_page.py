"""The dashboard's Search page: the emphasis search's rule and choice (search.json), its Pareto
front on validation, the front re-measured on test when `search.evaluate_front` was on, and
the table of candidates (search.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.widgets import load_csv, load_json, load_variants, missing, show_chart
from iamt.rundir import SEARCH_REPORT, SEARCH_TABLE

# The table's leading columns: validation next to test for each re-measured quantity.
LEADING = ["spec", "variant", "clean_cost", "test_clean_cost"]
LEADING += ["robustness_gain", "test_robustness_gain", "pareto", "chosen", "score"]


def page_search(run_dir: Path) -> None:
    st.title("Search")
    table = load_csv(run_dir, SEARCH_TABLE)
    if table is None:
        missing("emphasis search", SEARCH_TABLE)
        st.caption(
            "A run searches when its config has `search.enabled: true` (`iamt run`), or after "
            f"`iamt search {run_dir.name}`."
        )
        return
    search_choice(load_json(run_dir, SEARCH_REPORT))
    st.subheader("Pareto front on the validation split")
    show_chart(charts.pareto_chart, table)
    st.caption(
        "One point per candidate transform (hover for its spec and numbers), measured on "
        "the validation split; the dashed line joins the Pareto front, the red ring marks the "
        "chosen transform."
    )
    front_on_test(run_dir, table)
    st.subheader("Candidates")
    st.dataframe(candidates_table(table), hide_index=True)


def search_choice(report: dict[str, Any] | None) -> None:
    """The search's rule, what it measured on, and what it chose (search.json)."""
    if report is None:
        missing("search choice", SEARCH_REPORT)
        return
    conditions = report.get("conditions") or []
    st.markdown(
        f"**Rule:** {report.get('rule', '?')}.\n\n"
        f"Measured on {report.get('n', '?')} images of the {report.get('split', '?')} split, "
        f"clean and under {len(conditions)} perturbed set(s)."
    )
    chosen = report.get("chosen")
    if not chosen:
        st.warning("No transform met the rule: the sweep evaluated no searched variant.")
        return
    helps = "helps" if report.get("helps_on_validation") else "does not help"
    st.success(
        f"Chosen: `{chosen.get('spec')}`, evaluated on the test split as variant "
        f"`{report.get('variant')}`; by the rule's score it {helps} on validation "
        f"(score {_points(chosen.get('score'))}, clean cost {_points(chosen.get('clean_cost'))})."
    )


def _points(value: Any) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{float(value):+.2f} points"


def front_on_test(run_dir: Path, table: pd.DataFrame) -> None:
    st.subheader("The front re-measured on the test split")
    if not charts.front_remeasured(table):
        st.info(
            "The front was not re-measured on the test split (`search.evaluate_front` off): "
            "the front above is validation only."
        )
        if charts.measured_on_test(table).empty:
            return
        st.caption("The sweep measured the chosen transform on test: validation vs test.")
    show_chart(charts.front_on_test_chart, table, variants=load_variants(run_dir))
    st.caption(
        "Measured twice: by the search on validation (circle) and by the sweep on test as its "
        "own variant (diamond, labelled), joined by a segment; a long segment is a prediction "
        "that did not hold. Clean cost and gain in points, against the normal model on the "
        "same split."
    )


def candidates_table(table: pd.DataFrame) -> pd.DataFrame:
    """search.csv with the validation and test numbers side by side, then the rest; the
    columns no candidate fills (the test ones of an older search) left out."""
    optional = [c for c in ("variant", *charts.SEARCH_TEST_COLUMNS) if c in table.columns]
    shown = table.drop(columns=[c for c in optional if table[c].isna().all()])
    leading = [c for c in LEADING if c in shown.columns]
    return shown[[*leading, *(c for c in shown.columns if c not in leading)]]
