"""The dashboard's Compare page: two runs (or study members) side by side, run B − run A per
variant, family and attribute, paired per image where both share the test set
(`dashboards.compare`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboards import charts, compare, rundata
from dashboards.widgets import ci_text, load_variants, show_chart
from iamt.rundir import CONFIG, PARTS, RESULTS

AGAINST = "against"  # the query parameter naming run B


def _run_key(run_dir: Path) -> tuple[float, ...]:
    """What a comparison depends on: the run's config, results and part files (a new part
    changes the directory's mtime)."""
    return tuple(rundata.file_key(run_dir / name)[1] for name in (CONFIG, RESULTS, PARTS))


@st.cache_data(show_spinner="Comparing the runs…", max_entries=16)
def _cached_comparison(
    run_a: str, run_b: str, key_a: tuple[float, ...], key_b: tuple[float, ...]
) -> compare.Comparison:
    del key_a, key_b  # the cache key only
    return compare.compare_runs(Path(run_a), Path(run_b))


def pick_against(root: Path, names: list[str], name_a: str) -> Path | None:
    """Run B: ?against= when it names a listed run, else the first other run, else A itself."""
    requested = st.query_params.get(AGAINST)
    others = [name for name in names if name != name_a]
    default = requested if requested in names else (others or [name_a])[0]
    choice = str(st.selectbox("Compare against (run B)", names, index=names.index(default)))
    if st.query_params.get(AGAINST) != choice:
        st.query_params[AGAINST] = choice
    try:
        return rundata.safe_run_dir(root, choice)
    except rundata.RunDataError as error:
        st.error(f"Cannot open run: {error}")
        return None


def page_compare(root: Path, run_a: Path, names: list[str]) -> None:
    st.title("Compare")
    name_a = rundata.run_name(root, run_a)
    run_b = pick_against(root, names if name_a in names else [name_a, *names], name_a)
    if run_b is None:
        return
    name_b = rundata.run_name(root, run_b)
    st.markdown(
        f"**A** = `{name_a}` (the sidebar's run), **B** = `{name_b}`: differences are B − A."
    )
    try:
        comparison = _cached_comparison(str(run_a), str(run_b), _run_key(run_a), _run_key(run_b))
    except rundata.RunDataError as error:
        st.error(f"Cannot compare the runs: {error}")
        return
    if comparison.method == compare.PAIRED:
        st.success(f"Paired differences: {comparison.reason}.")
    else:
        st.warning(f"Unpaired differences: {comparison.reason}.")
    if comparison.table.empty:
        st.info("The two runs share no (variant, family, attribute) with results yet.")
        return
    variants = rundata.variant_order([*load_variants(run_a), *load_variants(run_b)])
    show_chart(charts.comparison_chart, comparison.table, variants, (name_a, name_b))
    st.caption(_method_note(comparison.method))
    st.dataframe(comparison_table(comparison.table), hide_index=True)


def _method_note(method: str) -> str:
    if method == compare.PAIRED:
        return (
            "Paired: the same images under the same conditions in both runs (part files' "
            "per-image outcomes); 95% percentile bootstrap resampling images; McNemar's exact p "
            "on the discordant pairs (it treats pairs as independent: trust the CI first)."
        )
    return (
        f"Unpaired: pooled accuracies of {RESULTS}; 95% Newcombe hybrid score interval for a "
        "difference of independent proportions (approximate where a family pools several "
        "conditions over the same images)."
    )


def comparison_table(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy()
    bounds = zip(shown["ci_low"], shown["ci_high"], strict=True)
    shown["difference 95% CI"] = [ci_text(low, high, "+.4f") for low, high in bounds]
    return shown
