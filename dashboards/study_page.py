"""The dashboard's Study page: a study directory (`iamt study`) as its report shows it, the
verdict per grid point first, then the effect plot (`study_report.study_effect_chart`), the
study's tables and its members, each linked to its own pages in the dashboard."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pandas as pd
import streamlit as st

from dashboards import rundata, study_report
from dashboards.widgets import load_csv, load_variants, show_chart
from iamt.rundir import REPORT, STUDY_GRID, STUDY_REPORT, STUDY_SEEDS, STUDY_TABLE

STUDY = "study"  # the query parameter naming the study directory


def study_names(runs: pd.DataFrame) -> list[str]:
    """The study directories among `rundata.list_runs`'s rows."""
    return [
        str(name) for name, kind in zip(runs["name"], runs["kind"], strict=True) if kind == STUDY
    ]


def select_study(root: Path) -> Path | None:
    """The study picked by ?study= (validated: a plain directory name under the runs root) or
    the sidebar; None, with a message, when there is none to show."""
    names = study_names(rundata.list_runs(root)) if root.is_dir() else []
    requested = st.query_params.get(STUDY)
    if requested is not None and requested not in names:
        try:
            rundata.safe_run_dir(root, requested)
            names.insert(0, requested)  # e.g. a study whose members are not written yet
        except rundata.RunDataError as error:
            st.error(f"Cannot open study: {error}")
            requested = None
    if not names:
        st.info(
            f"No studies in `{root}`: `iamt study STUDY_FILE --out {root}/<name>` trains one run "
            "per grid point × seed and writes the study's tables beside them."
        )
        return None
    index = names.index(requested) if requested in names else 0
    choice = str(st.sidebar.selectbox("Study", names, index=index, key="study"))
    if choice != requested:
        st.query_params[STUDY] = choice
    return rundata.safe_run_dir(root, choice)


def page_study(root: Path) -> None:
    st.title("Study")
    study_dir = select_study(root)
    if study_dir is None:
        return
    st.caption(f"Study `{study_dir.name}` in `{study_dir.parent}`")
    members = rundata.study_members(study_dir)
    table = load_csv(study_dir, STUDY_TABLE)  # a malformed file: an error naming it
    if table is None:
        if not (study_dir / STUDY_TABLE).is_file():
            st.info(
                f"No study results yet: `{STUDY_TABLE}` is not in `{study_dir.name}` "
                f"(`iamt study` writes it once all {len(members)} members are evaluated)."
            )
        member_links(study_dir, members, None)
        return
    seeds = load_csv(study_dir, STUDY_SEEDS)
    study_verdict(table)
    st.subheader("Effect per family and grid point")
    variants = rundata.variant_order(
        [*table["variant"], *(v for member in members for v in load_variants(member))]
    )
    show_chart(study_report.study_effect_chart, table, seeds, variants)
    st.caption(
        "Diamonds: each variant's effect across seeds with its hierarchical bootstrap 95% CI; "
        "dots: each training seed's own effect. Pooled over attributes, in accuracy points."
    )
    study_tables(table, load_csv(study_dir, STUDY_GRID))
    member_links(study_dir, members, seeds)


def study_verdict(table: pd.DataFrame) -> None:
    """The verdict per grid point, as the report opens with it."""
    st.subheader("Verdict: does emphasis help, across training seeds?")
    st.caption(study_report.statistics_note(table))
    if study_report.every_verdict_is_no_effect(table):
        st.info(study_report.ALL_NO_EFFECT)
    for grid_point in study_report.grid_points(table):
        rows = study_report.verdict_rows(table, grid_point)
        st.markdown(f"**Grid point `{grid_point}`**")
        st.markdown("\n".join(f"- {s}" for s in study_report.grid_point_summary(rows)))
        st.dataframe(rows, hide_index=True)


def study_tables(table: pd.DataFrame, grid: pd.DataFrame | None) -> None:
    st.subheader(f"Every test ({STUDY_TABLE})")
    st.dataframe(study_report.ordered_rows(table), hide_index=True)
    shown = study_report.grid_table(grid)
    if shown is not None:
        st.subheader(f"Between grid points ({STUDY_GRID})")
        st.caption("difference = the effect at grid_point_b − the effect at grid_point_a.")
        st.dataframe(shown, hide_index=True)


def member_links(study_dir: Path, members: list[Path], seeds: pd.DataFrame | None) -> None:
    """The members, each a link to its Overview page in this dashboard."""
    st.subheader("Members")
    if not members:
        st.info("No member runs yet.")
        return
    places = study_report.member_places(seeds)
    lines = []
    for member in members:
        name = rundata.MEMBER_SEPARATOR.join((study_dir.name, member.name))
        place = f" ({places[member.name]})" if member.name in places else ""
        note = "" if (member / REPORT).is_file() else f" · no `{REPORT}` yet"
        lines.append(f"- [{name}](?page=Overview&run={quote(name, safe='')}){place}{note}")
    st.markdown("\n".join(lines))
    if (study_dir / STUDY_REPORT).is_file():
        st.caption(f"The static report: `{study_dir / STUDY_REPORT}`.")
