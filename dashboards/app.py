"""Streamlit dashboard over the run directories: `streamlit run dashboards/app.py`.

The runs directory comes from IAMT_RUNS_DIR (default "runs"); the run and the page from the
query parameters `run` and `page` (so a view can be linked), or the sidebar. It only reads
files (CSV, JSON, YAML, safetensors via numpy): never torch or ray, so it stays light and can
watch a sweep while it runs. Every file may be missing or half-written: pages show what exists.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

# Streamlit runs this file as a script: make the repository root importable for `dashboards`.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from dashboards import charts, rundata  # noqa: E402
from dashboards.compare_page import page_compare  # noqa: E402
from dashboards.search_page import page_search  # noqa: E402
from dashboards.study_page import page_study  # noqa: E402
from dashboards.widgets import (  # noqa: E402
    ci_text,
    load_csv,
    load_manifest,
    load_masks,
    load_variants,
    masks_name,
    missing,
    runs_root,
    show_chart,
)
from iamt.rundir import (  # noqa: E402  (torch-free: names and readers of a run directory)
    CLEAN,
    CONFIG,
    DRIFT,
    FAILURES,
    IMPORTANCE,
    KNOWN_CSVS,
    MANIFEST,
    PARTS,
    RESULTS,
    SUMMARY,
    RunDirectory,
)
from iamt.vocabulary import Family  # noqa: E402

# Runs and Study show a directory of runs and a study; the others one run (or study member).
PAGES: tuple[str, ...] = ("Runs", "Study", "Overview", "Noise and corruptions", "Adversarial")
PAGES += ("Attention", "Search", "Compare", "Run info")
REFRESH_S = 5.0  # how often a running run's progress is re-read
GALLERY_SAMPLES = 8
GALLERY_PX = 64  # every gallery picture, sample or mask of any variant, is drawn this wide
GUIDANCE = (
    "No runs yet in `{root}`: run `make demo` (or `iamt train configs/demo.yaml --out "
    "runs/demo` then `iamt evaluate runs/demo`), or point `IAMT_RUNS_DIR` at a directory of runs."
)


# --- page selection ---------------------------------------------------------------------------


def select_page() -> str:
    requested = st.query_params.get("page", PAGES[0])
    index = PAGES.index(requested) if requested in PAGES else 0
    page = st.sidebar.radio("Page", PAGES, index=index)
    if st.query_params.get("page") != page:
        st.query_params["page"] = page
    return str(page)


def select_run(root: Path, runs: pd.DataFrame) -> Path | None:
    """The run picked by ?run= (validated: never a path outside runs_dir) or the sidebar."""
    names = rundata.run_names(runs)
    requested = st.query_params.get("run")
    if requested is not None:
        try:
            rundata.safe_run_dir(root, requested)
        except rundata.RunDataError as error:
            st.error(f"Cannot open run: {error}")
            # No fallback to another run: the user must pick one explicitly.
            choice = st.sidebar.selectbox("Run", names, index=None, placeholder="pick a run")
            if choice is None:
                return None
            st.query_params["run"] = choice
            return rundata.safe_run_dir(root, choice)
        if requested not in names:
            names.insert(0, requested)
    if not names:
        st.info(GUIDANCE.format(root=root))
        return None
    index = names.index(requested) if requested in names else 0
    choice = str(st.sidebar.selectbox("Run", names, index=index))
    if choice != requested:
        st.query_params["run"] = choice
    return rundata.safe_run_dir(root, choice)


def run_header(run_dir: Path, manifest: dict[str, Any] | None) -> None:
    st.caption(f"Run `{run_dir.name}` in `{run_dir.parent}`")
    if manifest is None:
        st.warning(f"This run has no {MANIFEST} yet: showing whatever files exist.")
        return
    status = manifest.get("status", "unknown")
    if status == "running":
        jobs = manifest.get("jobs") or {}
        done, total = jobs.get("done", 0), jobs.get("total") or 0
        stage = manifest.get("stage", "?")
        st.info(f"Run in progress (stage {stage}, {done}/{total} jobs): showing partial results.")
    elif status not in ("done", "finished"):
        st.warning(f"Run status: {status}")


# --- pages --------------------------------------------------------------------------------


def page_runs(root: Path) -> None:
    st.title("Runs")
    runs = rundata.list_runs(root)
    if runs.empty:
        st.info(GUIDANCE.format(root=root))
        return
    running = bool((runs["status"] == "running").any())

    # Only a running sweep changes: refresh the table then, leave it still otherwise.
    @st.fragment(run_every=REFRESH_S if running else None)
    def table() -> None:
        current = rundata.list_runs(root)
        st.dataframe(
            current,
            hide_index=True,
            column_config={
                "progress": st.column_config.ProgressColumn(
                    "progress", min_value=0.0, max_value=1.0, format="percent"
                )
            },
        )
        if running:
            st.caption(f"A run is in progress: this table refreshes every {REFRESH_S:.0f} s.")

    table()
    st.markdown(
        "Pick a run in the sidebar (or open `?run=<name>&page=Overview`). A study's members "
        "follow its row, named `<study>/<member>`; the study's verdict across its members is "
        "on the Study page (`?page=Study&study=<study>`)."
    )


def page_overview(run_dir: Path) -> None:
    st.title("Overview")
    summary = load_csv(run_dir, SUMMARY)
    variants = load_variants(run_dir)
    overview_clean(summary, load_csv(run_dir, CLEAN), variants)
    st.subheader("Headline: emphasized − normal")
    if summary is None:
        missing("summary", SUMMARY)
        return
    overview_headline(summary, variants)
    overview_errors(summary)


def overview_clean(
    summary: pd.DataFrame | None, clean: pd.DataFrame | None, variants: list[str]
) -> None:
    """Clean accuracy per variant and attribute (from clean.csv, else the summary's rows)."""
    st.subheader("Clean accuracy")
    if clean is None and summary is not None:
        clean = summary[(summary["level"] == "family") & (summary["family"] == Family.CLEAN)]
    if clean is None or clean.empty:
        missing("clean accuracy", CLEAN)
        return
    show_chart(charts.clean_accuracy_chart, clean, variants)
    table = clean[["variant", "attribute", "n", "accuracy", "ci_low", "ci_high"]].copy()
    table["95% CI"] = [ci_text(lo, hi) for lo, hi in zip(table.ci_low, table.ci_high, strict=True)]
    st.dataframe(table, hide_index=True)


def overview_headline(summary: pd.DataFrame, variants: list[str]) -> None:
    """The paired differences emphasized − normal per family, chart and table."""
    show_chart(charts.headline_chart, summary, variants=variants)
    families = [Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL, Family.TRANSFER]
    heads = summary[
        (summary["level"] == "family")
        & summary["family"].isin(families)
        & summary["difference"].notna()
    ]
    if heads.empty:
        return
    columns = ["family", "variant", "attribute", "accuracy", "difference"]
    table = heads[[*columns, "diff_ci_low", "diff_ci_high", "mcnemar_p", "p_holm"]].copy()
    bounds = zip(table.diff_ci_low, table.diff_ci_high, strict=True)
    table["difference 95% CI"] = [ci_text(lo, hi, "+.4f") for lo, hi in bounds]
    st.dataframe(table, hide_index=True)


def overview_errors(summary: pd.DataFrame) -> None:
    """mCE and relative mCE per variant (mean over attributes), then per attribute."""
    st.subheader("Corruption error (mCE, normal = 1.0)")
    errors = charts.corruption_errors(summary)
    if errors.empty:
        missing("corruption errors", SUMMARY)
        return
    pooled = errors.groupby("variant", as_index=False)[["mce", "relative_mce"]].mean()
    columns = st.columns(max(1, len(pooled)))
    for column, row in zip(columns, pooled.itertuples(), strict=False):
        column.metric(f"mCE ({row.variant})", _number(row.mce))
        column.metric(f"relative mCE ({row.variant})", _number(row.relative_mce))
    st.caption("Mean over attributes; per attribute:")
    st.dataframe(errors, hide_index=True)


def _number(value: Any) -> str:
    return "n/a" if pd.isna(value) else f"{float(value):.3f}"


def _filters(summary: pd.DataFrame, key: str) -> pd.DataFrame:
    """Attribute and variant filters shared by the noise/corruption views."""
    left, right = st.columns(2)
    attributes = sorted(summary["attribute"].dropna().unique())
    variants = rundata.variant_order(summary["variant"])
    attribute = left.selectbox("Attribute", ["all (mean)", *attributes], key=f"{key}_attribute")
    chosen = right.multiselect("Variants", variants, default=variants, key=f"{key}_variants")
    frame = summary[summary["variant"].isin(chosen)]
    if attribute != "all (mean)":
        frame = frame[frame["attribute"] == attribute]
    return frame


def page_noise(run_dir: Path) -> None:
    st.title("Noise and corruptions")
    summary = load_csv(run_dir, SUMMARY)
    if summary is None:
        missing("noise or corruption results", SUMMARY)
        return
    frame = _filters(summary, Family.NOISE)
    variants = load_variants(run_dir)
    st.subheader("Noise: accuracy vs strength")
    show_chart(charts.strength_curves_chart, frame, Family.NOISE, variants=variants)
    auc = frame[(frame["level"] == "perturbation") & (frame["family"] == Family.NOISE)]
    if not auc.empty:
        st.caption("Normalised area under accuracy vs noise strength (AUC):")
        st.dataframe(
            auc[["perturbation", "variant", "attribute", "auc", "difference", "mcnemar_p"]],
            hide_index=True,
        )
    st.subheader("Corruptions: accuracy vs severity")
    show_chart(charts.strength_curves_chart, frame, Family.CORRUPTION, variants=variants)
    st.subheader("Corruptions: accuracy difference vs normal, corruption × severity")
    show_chart(charts.difference_heatmap, frame, Family.CORRUPTION)


def page_adversarial(run_dir: Path) -> None:
    st.title("Adversarial")
    summary = load_csv(run_dir, SUMMARY)
    results = load_csv(run_dir, RESULTS)
    variants = load_variants(run_dir)

    st.subheader("Sanity checklist (Carlini et al., 2019)")
    if summary is None:
        missing("sanity flags", SUMMARY)
    else:
        sanity = charts.sanity_table(summary)
        checks = [c for c in sanity.columns if c.startswith("sanity_") and c != "sanity_all"]
        failed = [
            f"{check.removeprefix('sanity_')} ({row['variant']}/{row['attribute']})"
            for _, row in sanity.iterrows()
            for check in checks
            if row[check] is False or (not pd.isna(row[check]) and not bool(row[check]))
        ]
        if sanity.empty:
            st.info("No adversarial summary yet.")
        elif failed:
            st.error("Sanity checks FAILED: " + "; ".join(failed))
        else:
            st.success("All sanity checks pass.")
        st.dataframe(sanity, hide_index=True)

    st.subheader("Robust accuracy vs ε")
    source = summary if summary is not None else results
    if source is None:
        missing("adversarial results", SUMMARY)
    else:
        show_chart(charts.robust_accuracy_chart, source, variants=variants)
    if results is None:
        missing("per-job results", RESULTS)
        return
    st.subheader("Median minimal perturbation")
    show_chart(charts.median_distance_chart, results, variants)
    st.subheader("Transfer matrix")
    show_chart(charts.transfer_matrix_chart, results)
    matrix = charts.transfer_matrix(results)
    if not matrix.empty:
        st.dataframe(matrix, hide_index=True)


def page_attention(run_dir: Path) -> None:
    st.title("Attention")
    importance = load_csv(run_dir, IMPORTANCE)
    st.subheader("Channel importance")
    if importance is None:
        missing("channel importance", IMPORTANCE)
    else:
        show_chart(charts.importance_heatmap, importance)

    st.subheader("Sample attention masks")
    samples = load_masks(run_dir)
    if samples is None or not samples.masks:
        missing("mask samples", masks_name(run_dir))
    else:
        mask_gallery(samples, importance)

    st.subheader("Attention drift vs strength")
    drift_view(run_dir)


def drift_view(run_dir: Path) -> None:
    """drift.csv: how far each perturbation moves the masks, per variant (optional file)."""
    if not (run_dir / DRIFT).is_file():
        st.info(
            f"No attention drift in this run (`{DRIFT}` is missing): runs evaluated before "
            "drift was measured lack it, and a running sweep writes it at the end."
        )
        return
    drift = load_csv(run_dir, DRIFT)
    if drift is None:
        return
    if drift.empty:
        st.info(
            f"`{DRIFT}` has no rows: the run has no noise, corruption or fixed-ε attack job, "
            f"or its part files predate drift (move `{PARTS}/` aside and rerun `iamt evaluate`)."
        )
        return
    left, middle, right = st.columns(3)
    families = sorted(drift["family"].dropna().unique())
    family = left.selectbox("Family", ["all", *families], key="drift_family")
    attributes = sorted(drift["attribute"].dropna().unique())
    attribute = middle.selectbox("Attribute", ["all (mean)", *attributes], key="drift_attribute")
    measure = right.selectbox(
        "Measure",
        list(charts.DRIFT_MEASURES),
        format_func=lambda m: charts.DRIFT_MEASURES[m],
        key="drift_measure",
    )
    show_chart(
        charts.drift_chart,
        drift,
        measure=measure,
        family=None if family == "all" else family,
        attribute=None if attribute == "all (mean)" else attribute,
        variants=load_variants(run_dir),
    )
    st.caption(
        "Mask cosine: mean over images of the cosine similarity between a variant's masks "
        "(after its transform) on the clean and on the perturbed image; 1 = unmoved. Spearman "
        "ρ: rank correlation of the channel importance (mean mask) on clean vs perturbed "
        "images. Attacks: each variant against its own adversarials (minimisation attacks and "
        "transfer are not measured). Pooled over shards, n-weighted."
    )


def mask_gallery(samples: rundata.MaskSamples, importance: pd.DataFrame | None) -> None:
    attributes = samples.attributes or sorted({a for _, a in samples.masks})
    variants = rundata.variant_order(variant for variant, _ in samples.masks)
    left, middle, right = st.columns(3)
    attribute = left.selectbox("Attribute", attributes, key="mask_attribute")
    default_channel = 0
    if importance is not None:
        top = importance[(importance["attribute"] == attribute) & (importance["rank"] == 1)]
        if not top.empty:
            default_channel = int(top["channel"].iloc[0])
    channels = max(1, samples.channels)
    channel = middle.number_input(
        "Channel (default: most important)",
        min_value=0,
        max_value=channels - 1,
        value=min(default_channel, channels - 1),
        key=f"mask_channel_{attribute}",
    )
    chosen = right.multiselect("Variants", variants, default=variants, key="mask_variants")
    gallery = rundata.mask_gallery(
        samples, attribute, int(channel), chosen, count=GALLERY_SAMPLES, size=GALLERY_PX
    )
    # One width for every row; the variant names its row, so no caption widens one image.
    captions = [f"sample {i}" for i in range(len(gallery.images))]
    st.image(gallery.images, caption=captions, width=GALLERY_PX)
    for variant, masks in gallery.masks.items():
        st.markdown(f"**{variant}** · channel {channel}")
        st.image(masks, caption=captions, width=GALLERY_PX)
    st.caption(
        f"Masks of channel {channel} for attribute {attribute}; brightness scaled to the maximum "
        f"over the variants shown ({gallery.vmax:.3g}). Transforms: "
        + ", ".join(f"{v} = {samples.variants.get(v, '?')}" for v in chosen)
    )


def page_info(run_dir: Path, manifest: dict[str, Any] | None) -> None:
    st.title("Run info")
    st.subheader("Resolved config")
    try:
        config = RunDirectory(run_dir).read_config_text()
    except rundata.RunDataError as error:
        st.error(f"Cannot read `{CONFIG}`: {error}")
        config = None
    if config is None:
        missing("config", CONFIG)
    else:
        st.code(config, language="yaml")
    st.subheader("Manifest")
    if manifest is None:
        missing("manifest", MANIFEST)
    else:
        st.json(manifest, expanded=False)
    st.subheader("Failures")
    failures = load_csv(run_dir, FAILURES)
    if failures is None:
        missing("failure records", FAILURES)
    elif failures.empty:
        st.success("No failed jobs.")
    else:
        st.error(f"{len(failures)} job(s) failed:")
        st.dataframe(failures, hide_index=True)
    st.subheader("Downloads")
    for filename in KNOWN_CSVS:
        path = run_dir / filename
        if path.is_file():
            st.download_button(
                f"Download {filename}",
                data=path.read_bytes(),
                file_name=f"{run_dir.name}_{filename}",
                mime="text/csv",
                key=f"download_{filename}",
            )


def main() -> None:
    st.set_page_config(page_title="iamt-robust", layout="wide")
    root = runs_root()
    page = select_page()
    if page == "Runs":
        page_runs(root)
        return
    if page == "Study":  # a study directory, not a run: it has its own picker
        page_study(root)
        return
    if not root.is_dir():
        st.info(GUIDANCE.format(root=root))
        return
    runs = rundata.list_runs(root)
    run_dir = select_run(root, runs)
    if run_dir is None:
        return
    manifest = load_manifest(run_dir)
    run_header(run_dir, manifest)
    if page == "Compare":
        page_compare(root, run_dir, rundata.run_names(runs))
        return
    if page == "Overview":
        page_overview(run_dir)
    elif page == "Noise and corruptions":
        page_noise(run_dir)
    elif page == "Adversarial":
        page_adversarial(run_dir)
    elif page == "Attention":
        page_attention(run_dir)
    elif page == "Search":
        page_search(run_dir)
    else:
        page_info(run_dir, manifest)


main()
