"""Altair chart builders for the dashboard and the static report.

Each builder is pure: a DataFrame as read by `dashboards.rundata` (the rows of results.csv,
summary.csv, clean.csv, importance.csv) in, an Altair chart out, with axis titles that carry
units. The report saves them as PNG with `chart.save(path)` (vl-convert), so nothing here may
depend on Streamlit. Builders filter the rows they need themselves and accept extra columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias

import altair as alt
import numpy as np
import pandas as pd

from dashboards.rundata import variant_order
from iamt.rundir import DRIFT, SEARCH_COLUMNS, SEARCH_TABLE
from iamt.vocabulary import FRONT_VARIANT_PREFIX, IDENTITY, NORMAL, Family, StrengthAxis

Chart: TypeAlias = alt.Chart | alt.LayerChart | alt.FacetChart | alt.VConcatChart

ACCURACY = "accuracy (fraction)"
ROBUST_ACCURACY = "robust accuracy (fraction)"
DIFFERENCE = "accuracy difference, variant − normal (fraction)"

# One colour per variant in every chart: `normal` always the neutral grey, the others the rest
# of Vega's category10 (its grey left out) in `variant_order`, repeating after nine.
NEUTRAL = "#7f7f7f"
VARIANT_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)
Variants: TypeAlias = Sequence[str] | None  # a run's variants (rundata.run_variants), or None


def variant_colors(variants: Iterable[object]) -> dict[str, str]:
    """{variant: colour}: normal neutral, the others the palette in `variant_order`. Pass the
    run's whole variant list so every chart of the run agrees whatever subset it shows."""
    others = [name for name in variant_order(variants) if name != NORMAL]
    colours = {name: VARIANT_PALETTE[i % len(VARIANT_PALETTE)] for i, name in enumerate(others)}
    return {NORMAL: NEUTRAL, **colours}


def variant_color(
    frame: pd.DataFrame, variants: Variants = None, field: str = "variant"
) -> alt.Color:
    """The colour channel of a chart coloured by variant: the run's palette (`variants`, by
    default those in `frame`), its legend listing only the variants `frame` shows."""
    shown = variant_order(frame[field]) if field in frame.columns else []
    palette = variant_colors([*(variants or []), *shown])
    return alt.Color(
        f"{field}:N",
        title="variant",
        scale=alt.Scale(domain=list(palette), range=list(palette.values())),
        legend=alt.Legend(values=shown),
        sort=list(palette),
    )


def one_x_title(grid: Chart, x_title: str, title: str) -> alt.VConcatChart:
    """A faceted chart with its x-axis title once, centred under the grid (the facets' own axes
    carry none), and `title` above: repeated per facet, long titles ran into each other."""
    below = alt.TitleParams(x_title, orient="bottom", anchor="middle", fontSize=11)
    return alt.vconcat(grid.properties(title=below)).properties(title=title)


# Attacks whose ε (or minimal distance) is an L∞ distance; every other attack is L2
# (fgsm and the BIM/PGD/FMN/AutoAttack L∞ variants vs DeepFool, C&W, L2 PGD, Boundary).
_LINF_ATTACKS = ("fgsm", "linf_pgd", "linf_bim", "linf_fmn", "autoattack_linf")


def attack_norm(perturbation: str) -> str:
    """'L∞' or 'L2': the norm in which an attack's ε and distances are measured."""
    name = str(perturbation)
    return "L∞" if name in _LINF_ATTACKS or name.startswith("linf") else "L2"


def empty_chart(message: str) -> alt.Chart:
    """A placeholder chart (the report still gets a file, the app a visible note)."""
    frame = pd.DataFrame({"note": [message]})
    return (
        alt.Chart(frame)
        .mark_text(size=14)
        .encode(text="note:N")
        .properties(width=400, height=60, title=message)
    )


def _rows(frame: pd.DataFrame, **equal: object) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for column, value in equal.items():
        if column not in frame.columns:
            return frame.iloc[0:0]
        mask &= frame[column] == value
    return frame[mask].copy()


def clean_accuracy_chart(clean: pd.DataFrame, variants: Variants = None) -> Chart:
    """Clean accuracy per attribute (x) and variant (colour), Wilson 95% CI as error bars.

    `clean`: clean.csv, or summary.csv rows with family == 'clean' (level 'family');
    `variants`: the run's, for its colours (`variant_color`)."""
    frame = clean.copy()
    if "level" in frame.columns:
        frame = frame[frame["level"] == "family"]
    if "family" in frame.columns:
        frame = frame[frame["family"] == Family.CLEAN]
    if frame.empty:
        return empty_chart("no clean accuracy yet")
    tooltip = [
        alt.Tooltip("variant:N"),
        alt.Tooltip("attribute:N"),
        alt.Tooltip("accuracy:Q", format=".3f"),
        alt.Tooltip("ci_low:Q", title="95% CI low", format=".3f"),
        alt.Tooltip("ci_high:Q", title="95% CI high", format=".3f"),
        alt.Tooltip("n:Q", title="samples"),
    ]
    base = alt.Chart(frame).encode(
        x=alt.X("attribute:N", title="attribute"),
        xOffset=alt.XOffset("variant:N", sort=variant_order(frame["variant"])),
        color=variant_color(frame, variants),
    )
    bars = base.mark_bar(opacity=0.8).encode(
        y=alt.Y("accuracy:Q", title=f"clean {ACCURACY}", scale=alt.Scale(domain=[0, 1])),
        tooltip=tooltip,
    )
    errors = base.mark_errorbar(ticks=True, color="black").encode(
        y=alt.Y("ci_low:Q", title=f"clean {ACCURACY}"), y2="ci_high:Q"
    )
    return alt.layer(bars, errors).properties(
        title="Clean test accuracy (95% Wilson CI)", width=alt.Step(28), height=260
    )


def _difference_tooltips() -> list[alt.Tooltip]:
    """Variant, attribute, the paired difference with its 95% CI, and McNemar's p."""
    return [
        alt.Tooltip("variant:N"),
        alt.Tooltip("attribute:N"),
        alt.Tooltip("difference:Q", format="+.4f"),
        alt.Tooltip("diff_ci_low:Q", title="95% CI low", format="+.4f"),
        alt.Tooltip("diff_ci_high:Q", title="95% CI high", format="+.4f"),
        alt.Tooltip("mcnemar_p:Q", title="McNemar p", format=".3g"),
    ]


def headline_chart(
    summary: pd.DataFrame,
    families: tuple[str, ...] = (Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL),
    variants: Variants = None,
) -> Chart:
    """Emphasized − normal accuracy per family (panel) and attribute (x), bootstrap 95% CI bars,
    McNemar p in the tooltip, a rule at zero. `summary`: summary.csv (level 'family' is used)."""
    variants = variants or variant_order(summary.get("variant", []))
    frame = _rows(summary, level="family")
    frame = frame[frame["family"].isin(families) & (frame["variant"] != NORMAL)]
    frame = frame.dropna(subset=["difference"])
    if frame.empty:
        return empty_chart("no paired differences yet")
    tooltip = [
        alt.Tooltip("family:N"),
        *_difference_tooltips(),
        alt.Tooltip("n:Q", title="samples"),
    ]
    return _difference_grid(
        frame,
        variants,
        tooltip,
        y_title=DIFFERENCE,
        families=[str(f) for f in families],
        title="Emphasized − normal accuracy (bootstrap 95% CI; McNemar p in tooltip)",
    )


def _difference_grid(
    frame: pd.DataFrame,
    variants: Variants,
    tooltip: list[alt.Tooltip],
    *,
    y_title: str,
    families: list[str],
    title: str,
    columns: int = 4,
    step: int = 30,
) -> Chart:
    """Differences with CI bars per attribute (x) and variant (colour), one panel per family
    (`columns` panels a row, `step` px per attribute), a rule at zero: the headline and the
    two-run comparison."""
    base = alt.Chart().encode(
        x=alt.X("attribute:N", title=None),
        xOffset=alt.XOffset("variant:N", sort=variant_order(frame["variant"])),
        color=variant_color(frame, variants),
    )
    points = base.mark_point(filled=True, size=70).encode(
        y=alt.Y("difference:Q", title=y_title), tooltip=tooltip
    )
    errors = base.mark_errorbar(ticks=True).encode(
        y=alt.Y("diff_ci_low:Q", title=y_title), y2="diff_ci_high:Q", tooltip=tooltip
    )
    zero = alt.Chart().mark_rule(color="grey", strokeDash=[4, 4]).encode(y=alt.datum(0))
    grid = (
        alt.layer(zero, errors, points, data=frame)
        .properties(width=alt.Step(step), height=240)
        .facet(facet=alt.Facet("family:N", title="family", sort=families), columns=columns)
    )
    return one_x_title(grid, "attribute", title)


_STRENGTH_TITLES = {
    StrengthAxis.SEVERITY: "severity (ImageNet-C level, 1–5)",
    StrengthAxis.EPSILON: "noise strength (σ / fraction / half-width, [0,1] pixel units)",
}


def _strength_axis(family: str) -> tuple[str, str]:
    """The column that holds a family's strengths, and its axis title."""
    axis = StrengthAxis.of_family(family)
    return axis.column, _STRENGTH_TITLES[axis]


def strength_curves_chart(
    summary: pd.DataFrame, family: str = Family.NOISE, columns: int = 5, variants: Variants = None
) -> Chart:
    """Accuracy vs strength per perturbation (panel), one line per variant with its 95% CI band.

    `summary`: summary.csv; the level 'condition' rows of `family` ('noise' or 'corruption')
    are used, averaged over the attributes present (filter the attribute before for one)."""
    frame = _rows(summary, level="condition", family=family)
    x_field, x_title = _strength_axis(family)
    frame = frame.dropna(subset=[x_field, "accuracy"])
    if frame.empty:
        return empty_chart(f"no {family} results yet")
    frame = (
        frame.groupby(["perturbation", "variant", x_field], as_index=False)[
            ["accuracy", "ci_low", "ci_high"]
        ]
        .mean()
        .sort_values(x_field)
    )
    tooltip = [
        alt.Tooltip("perturbation:N"),
        alt.Tooltip("variant:N"),
        alt.Tooltip(f"{x_field}:Q"),
        alt.Tooltip("accuracy:Q", format=".3f"),
        alt.Tooltip("ci_low:Q", title="95% CI low", format=".3f"),
        alt.Tooltip("ci_high:Q", title="95% CI high", format=".3f"),
    ]
    x = alt.X(f"{x_field}:Q", title=None)
    base = alt.Chart().encode(x=x, color=variant_color(frame, variants))
    band = base.mark_area(opacity=0.2).encode(
        y=alt.Y("ci_low:Q", title=ACCURACY, scale=alt.Scale(domain=[0, 1])), y2="ci_high:Q"
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("accuracy:Q", title=ACCURACY, scale=alt.Scale(domain=[0, 1])), tooltip=tooltip
    )
    grid = (
        alt.layer(band, line, data=frame)
        .properties(width=150, height=120)
        .facet(facet=alt.Facet("perturbation:N", title=str(family)), columns=columns)
    )
    return one_x_title(grid, x_title, f"Accuracy vs {x_field} per {family} (95% CI band)")


def difference_heatmap(summary: pd.DataFrame, family: str = Family.CORRUPTION) -> Chart:
    """Accuracy difference (variant − normal) over perturbation (rows) × severity (columns),
    one panel per variant and attribute; McNemar p in the tooltip. Uses level 'condition'."""
    frame = _rows(summary, level="condition", family=family)
    x_field, x_title = _strength_axis(family)
    frame = frame[frame["variant"] != NORMAL].dropna(subset=["difference", x_field])
    if frame.empty:
        return empty_chart(f"no {family} differences yet")
    limit = max(float(frame["difference"].abs().max()), 0.01)
    tooltip = [
        alt.Tooltip("perturbation:N"),
        alt.Tooltip(f"{x_field}:O"),
        *_difference_tooltips(),
    ]
    heat = (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X(f"{x_field}:O", title=None),
            y=alt.Y("perturbation:N", title=str(family)),
            color=alt.Color(
                "difference:Q",
                title=DIFFERENCE,
                scale=alt.Scale(scheme="redblue", domain=[-limit, limit], domainMid=0),
            ),
            tooltip=tooltip,
        )
        .properties(width=alt.Step(28), height=alt.Step(16))
    )
    grid = heat.facet(
        row=alt.Row("variant:N", title="variant", sort=variant_order(frame["variant"])),
        column=alt.Column("attribute:N", title="attribute"),
    )
    return one_x_title(
        grid, x_title, f"{family}: accuracy difference vs normal (blue: variant better)"
    )


def _adversarial_conditions(frame: pd.DataFrame) -> pd.DataFrame:
    """White-box rows per (attack, variant, ε): from summary 'condition' rows or results rows."""
    if "level" in frame.columns:
        frame = frame[frame["level"] == "condition"]
    frame = frame[frame["family"] == Family.ADVERSARIAL].dropna(subset=["epsilon", "accuracy"])
    if "correct" in frame.columns:  # results.csv: pool the shards of one condition
        frame = frame.groupby(["perturbation", "variant", "epsilon"], as_index=False)[
            ["n", "correct", "accuracy", "ci_low", "ci_high"]
        ].agg(
            {"n": "sum", "correct": "sum", "accuracy": "mean", "ci_low": "mean", "ci_high": "mean"}
        )
    else:
        frame = frame.groupby(["perturbation", "variant", "epsilon"], as_index=False)[
            ["accuracy", "ci_low", "ci_high"]
        ].mean()
    frame["norm"] = frame["perturbation"].map(attack_norm)
    return frame.sort_values("epsilon")


def robust_accuracy_chart(rows: pd.DataFrame, columns: int = 4, variants: Variants = None) -> Chart:
    """Robust accuracy vs ε per attack (panel), one line per variant with its 95% CI band;
    L∞ and L2 attacks in separate rows since their ε are not comparable. Averaged over the
    attributes present. `rows`: summary.csv (level 'condition') or results.csv."""
    frame = _adversarial_conditions(rows)
    if frame.empty:
        return empty_chart("no adversarial results yet")
    variants = variants or variant_order(frame["variant"])
    charts: list[Chart] = []
    for norm in ("L∞", "L2"):
        part = frame[frame["norm"] == norm]
        if part.empty:
            continue
        x_title = f"ε ({norm}, [0,1] pixel units)"
        tooltip = [
            alt.Tooltip("perturbation:N", title="attack"),
            alt.Tooltip("variant:N"),
            alt.Tooltip("epsilon:Q", title=f"ε ({norm})", format=".4f"),
            alt.Tooltip("accuracy:Q", title="robust accuracy", format=".3f"),
            alt.Tooltip("ci_low:Q", title="95% CI low", format=".3f"),
            alt.Tooltip("ci_high:Q", title="95% CI high", format=".3f"),
        ]
        base = alt.Chart().encode(
            x=alt.X("epsilon:Q", title=None), color=variant_color(part, variants)
        )
        band = base.mark_area(opacity=0.2).encode(
            y=alt.Y("ci_low:Q", title=ROBUST_ACCURACY, scale=alt.Scale(domain=[0, 1])),
            y2="ci_high:Q",
        )
        line = base.mark_line(point=True).encode(
            y=alt.Y("accuracy:Q", title=ROBUST_ACCURACY, scale=alt.Scale(domain=[0, 1])),
            tooltip=tooltip,
        )
        grid = (
            alt.layer(band, line, data=part)
            .properties(width=160, height=130)
            .facet(facet=alt.Facet("perturbation:N", title=f"{norm} attacks"), columns=columns)
        )
        below = alt.TitleParams(x_title, orient="bottom", anchor="middle", fontSize=11)
        charts.append(grid.properties(title=below))  # each norm's ε title once, under its grid
    return alt.vconcat(*charts).properties(title="Robust accuracy vs ε per attack (95% CI band)")


def median_distance_chart(results: pd.DataFrame, variants: Variants = None) -> Chart:
    """Median minimal perturbation of the minimisation attacks, per attack (panel), attribute
    (x) and variant (colour). `results`: results.csv (rows with a median_distance). An infinite
    median (the attack failed on half of the samples or more) is shown as a note in the tooltip
    and left out of the bars."""
    variants = variants or variant_order(results["variant"])
    adversarial = results["family"] == Family.ADVERSARIAL
    frame = results[adversarial & results["median_distance"].notna()]
    if frame.empty:
        return empty_chart("no minimisation attack results yet")
    # The distance is per sample, not per ε: one value per (attack, variant, attribute).
    frame = frame.groupby(["perturbation", "variant", "attribute"], as_index=False)[
        "median_distance"
    ].median()
    frame["norm"] = frame["perturbation"].map(attack_norm)
    frame["attack"] = frame["perturbation"] + " (" + frame["norm"] + ")"
    frame["failed"] = ~np.isfinite(frame["median_distance"].to_numpy(dtype=float))
    frame["distance"] = frame["median_distance"].where(~frame["failed"])
    frame["shown"] = np.where(frame["failed"], "∞ (failed on ≥ half)", "")
    tooltip = [
        alt.Tooltip("attack:N"),
        alt.Tooltip("variant:N"),
        alt.Tooltip("attribute:N"),
        alt.Tooltip("distance:Q", title="median minimal perturbation", format=".4f"),
        alt.Tooltip("shown:N", title="note"),
    ]
    bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("attribute:N", title=None),
            xOffset=alt.XOffset("variant:N", sort=variant_order(frame["variant"])),
            y=alt.Y(
                "distance:Q",
                title="median minimal perturbation ([0,1] pixel units, norm in panel title)",
            ),
            color=variant_color(frame, variants),
            tooltip=tooltip,
        )
        .properties(width=alt.Step(22), height=200)
    )
    grid = bars.facet(column=alt.Column("attack:N", title="attack"))
    return one_x_title(
        grid, "attribute", "Median minimal adversarial perturbation (larger = more robust)"
    )


def transfer_matrix(results: pd.DataFrame) -> pd.DataFrame:
    """Robust accuracy per (attack, source variant, target variant), pooled over ε, shards and
    the attributes present: transfer rows plus the white-box diagonal (source == target)."""
    columns = ["perturbation", "source_variant", "variant", "n", "correct", "accuracy"]
    transfer = results[results["family"] == Family.TRANSFER]
    if transfer.empty:
        return pd.DataFrame(columns=columns)
    attacks = set(transfer["perturbation"])
    white = results[
        (results["family"] == Family.ADVERSARIAL) & results["perturbation"].isin(attacks)
    ]
    white = white.assign(source_variant=white["variant"])
    both = pd.concat([transfer, white], ignore_index=True)
    pooled = both.groupby(["perturbation", "source_variant", "variant"], as_index=False)[
        ["n", "correct"]
    ].sum()
    pooled["accuracy"] = pooled["correct"] / pooled["n"].where(pooled["n"] > 0)
    return pooled[columns]


def transfer_matrix_chart(results: pd.DataFrame) -> Chart:
    """Heatmap of robust accuracy: adversarials crafted on the source variant (rows),
    evaluated on the target variant (columns), one panel per attack. `results`: results.csv."""
    frame = transfer_matrix(results)
    if frame.empty:
        return empty_chart("no transfer results yet")
    tooltip = [
        alt.Tooltip("perturbation:N", title="attack"),
        alt.Tooltip("source_variant:N", title="crafted on"),
        alt.Tooltip("variant:N", title="evaluated on"),
        alt.Tooltip("accuracy:Q", title="robust accuracy", format=".3f"),
        alt.Tooltip("n:Q", title="samples"),
    ]
    order = variant_order([*frame["variant"], *frame["source_variant"]])
    base = alt.Chart().encode(
        x=alt.X("variant:N", title=None, sort=order),
        y=alt.Y("source_variant:N", title="source variant (crafted on)", sort=order),
    )
    heat = base.mark_rect().encode(
        color=alt.Color(
            "accuracy:Q", title=ROBUST_ACCURACY, scale=alt.Scale(domain=[0, 1], scheme="viridis")
        ),
        tooltip=tooltip,
    )
    text = base.mark_text(baseline="middle").encode(
        text=alt.Text("accuracy:Q", format=".2f"),
        color=alt.condition(alt.datum.accuracy > 0.5, alt.value("black"), alt.value("white")),
    )
    grid = (
        alt.layer(heat, text, data=frame)
        .properties(width=alt.Step(60), height=alt.Step(40))
        .facet(column=alt.Column("perturbation:N", title="attack"))
    )
    return one_x_title(
        grid,
        "target variant (evaluated on)",
        "Transfer: robust accuracy, source → target (diagonal: white-box)",
    )


def importance_heatmap(importance: pd.DataFrame) -> Chart:
    """Channel importance score per attribute (rows) × channel (columns); rank in the tooltip.
    `importance`: importance.csv."""
    if importance.empty:
        return empty_chart("no channel importance yet")
    channels = int(importance["channel"].nunique())
    return (
        alt.Chart(importance)
        .mark_rect()
        .encode(
            x=alt.X("channel:O", title="attention channel (index)"),
            y=alt.Y("attribute:N", title="attribute"),
            color=alt.Color("score:Q", title="importance score (mean mask, a.u.)"),
            tooltip=[
                alt.Tooltip("attribute:N"),
                alt.Tooltip("channel:O"),
                alt.Tooltip("score:Q", format=".4g"),
                alt.Tooltip("rank:Q", title="rank (1 = most important)"),
            ],
        )
        .properties(
            title="Channel importance per attribute",
            width=alt.Step(max(6, min(20, 640 // max(channels, 1)))),
            height=alt.Step(24),
        )
    )


DRIFT_MEASURES = {
    "mask_cosine": "mask cosine (1 = unmoved)",
    "importance_rank_correlation": "importance rank ρ (Spearman)",
}


def drift_curves(
    drift: pd.DataFrame,
    *,
    measure: str = "mask_cosine",
    family: str | None = None,
    attribute: str | None = None,
) -> pd.DataFrame:
    """drift.csv pooled per (family, perturbation, variant, strength): the n-weighted mean of
    `measure` over shards and attributes (or one `attribute`), optionally one `family`."""
    if measure not in DRIFT_MEASURES:
        raise ValueError(f"unknown drift measure {measure!r}; choose from {list(DRIFT_MEASURES)}")
    frame = drift
    if family is not None:
        frame = frame[frame["family"] == family]
    if attribute is not None:
        frame = frame[frame["attribute"] == attribute]
    frame = frame.dropna(subset=["strength", measure])
    columns = ["family", "perturbation", "variant", "strength", measure, "n"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame = frame.assign(
        _weighted=pd.to_numeric(frame[measure]) * frame["n"], n=pd.to_numeric(frame["n"])
    )
    pooled = frame.groupby(["family", "perturbation", "variant", "strength"], as_index=False)[
        ["_weighted", "n"]
    ].sum()
    pooled[measure] = pooled["_weighted"] / pooled["n"]
    return pooled[columns].sort_values(["family", "perturbation", "variant", "strength"])


def drift_chart(
    drift: pd.DataFrame,
    *,
    measure: str = "mask_cosine",
    family: str | None = None,
    attribute: str | None = None,
    columns: int = 4,
    variants: Variants = None,
) -> Chart:
    """Attention drift vs perturbation strength: one line per variant, one panel per
    perturbation (its own x scale: noise strength, corruption severity or an attack's ε).
    `drift`: drift.csv; `measure`: mask_cosine (default) or importance_rank_correlation;
    averaged over the attributes present unless `attribute` picks one (n-weighted)."""
    variants = variants or variant_order(drift["variant"])
    frame = drift_curves(drift, measure=measure, family=family, attribute=attribute)
    if frame.empty:
        return empty_chart(f"no attention drift yet ({DRIFT})")
    frame["panel"] = frame["family"] + ": " + frame["perturbation"]
    title = DRIFT_MEASURES[measure]
    tooltip = [
        alt.Tooltip("panel:N", title="perturbation"),
        alt.Tooltip("variant:N"),
        alt.Tooltip("strength:Q", format=".4g"),
        alt.Tooltip(f"{measure}:Q", title=measure, format=".5f"),
        alt.Tooltip("n:Q", title="image × attribute pairs"),
    ]
    line = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("strength:Q", title=None),
            y=alt.Y(f"{measure}:Q", title=title, scale=alt.Scale(zero=False)),
            color=variant_color(frame, variants),
            tooltip=tooltip,
        )
        .properties(width=160, height=140)
    )
    scope = "mean over attributes" if attribute is None else f"attribute {attribute}"
    grid = line.facet(facet=alt.Facet("panel:N", title="perturbation"), columns=columns)
    return one_x_title(
        grid.resolve_scale(x="independent"),
        "strength (noise σ… / severity 1–5 / ε)",
        f"Attention drift, clean vs perturbed: {title} ({scope}); noise strengths and ε in "
        "[0,1] pixel units",
    )


def sanity_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The sanity checklist per variant and attribute (level 'family', family 'adversarial'):
    one boolean column per check; missing checks stay <NA>."""
    frame = _rows(summary, level="family", family=Family.ADVERSARIAL)
    columns = [c for c in summary.columns if c.startswith("sanity_")]
    return frame[["variant", "attribute", *columns]].reset_index(drop=True)


def corruption_errors(summary: pd.DataFrame) -> pd.DataFrame:
    """mCE and relative mCE per variant and attribute (level 'family', family 'corruption')."""
    frame = _rows(summary, level="family", family=Family.CORRUPTION)
    return frame[["variant", "attribute", "mce", "relative_mce"]].reset_index(drop=True)


# search.csv's clean cost and robustness gain re-measured on the test split by the sweep, for
# the candidates its `variant` column names (normal, the chosen one and, with
# `search.evaluate_front`, the other front members front-1, front-2, …); points.
SEARCH_TEST_COLUMNS = tuple(column for column in SEARCH_COLUMNS if column.startswith("test_"))
COST_TITLE = "clean cost, normal − candidate (points)"
GAIN_TITLE = "robustness gain (points)"


def search_frame(search: pd.DataFrame) -> pd.DataFrame:
    """search.csv ready to draw: the flags as plain booleans (<NA>: False), the test-split
    columns as numbers and `variant` as text ("" for a candidate the sweep did not measure)."""
    frame = search.copy()
    for column in ("pareto", "chosen"):  # booleans as read_csv types them
        frame[column] = frame[column].astype(str).str.lower() == "true"
    for column in SEARCH_TEST_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if "variant" in frame.columns:
        frame["variant"] = frame["variant"].fillna("").astype(str)
    return frame


def measured_on_test(search: pd.DataFrame) -> pd.DataFrame:
    """The candidates the sweep re-measured on test: a `variant` and both test numbers (none
    in a search.csv written before the columns existed)."""
    if not {"variant", *SEARCH_TEST_COLUMNS} <= set(search.columns):
        return search.iloc[0:0]
    frame = search_frame(search)
    return frame[(frame["variant"] != "") & frame[list(SEARCH_TEST_COLUMNS)].notna().all(axis=1)]


def front_remeasured(search: pd.DataFrame) -> bool:
    """Whether the front was re-measured on test (`search.evaluate_front` on): some front
    member beyond the chosen one has its test numbers. Without it only normal and the chosen
    transform (the sweep's `searched`) are measured on test."""
    measured = measured_on_test(search)
    return not measured.empty and bool(
        measured["variant"].str.startswith(FRONT_VARIANT_PREFIX).any()
    )


def _search_tooltips(frame: pd.DataFrame) -> list[alt.Tooltip]:
    """Every candidate's spec, sweep variant (when measured on test) and numbers (points)."""
    fields = [
        ("clean_cost", "clean cost, validation"),
        ("robustness_gain", "robustness gain, validation"),
        ("noise_gain", "noise gain, validation"),
        ("corruption_gain", "corruption gain, validation"),
        ("adversarial_gain", "adversarial gain, validation"),
        ("clean_accuracy", "clean accuracy, validation"),
        ("score", "score (search.rule)"),
        ("test_clean_cost", "clean cost, test"),
        ("test_robustness_gain", "robustness gain, test"),
    ]
    tooltip = [alt.Tooltip("spec:N", title="transform")]
    if "variant" in frame.columns:
        tooltip.append(alt.Tooltip("variant:N", title="sweep variant"))
    for column, title in fields:
        if column in frame.columns and frame[column].notna().any():
            tooltip.append(alt.Tooltip(f"{column}:Q", title=f"{title} (points)", format=".2f"))
    return tooltip


def pareto_chart(search: pd.DataFrame) -> Chart:
    """The emphasis search (search.csv) on the validation split: clean cost (x) against
    robustness gain (y), one point per candidate transform (its spec and numbers in the
    tooltip), the Pareto front joined by a line, the chosen one ringed."""
    if search.empty:
        return empty_chart("no search trials")
    frame = search_frame(search)
    frame["on the front"] = frame["pareto"].map({True: "Pareto front", False: "dominated"})
    tooltip = _search_tooltips(frame)
    x = alt.X("clean_cost:Q", title=f"{COST_TITLE}, validation")
    y = alt.Y("robustness_gain:Q", title=f"{GAIN_TITLE}, validation")
    front_colours = alt.Scale(domain=["Pareto front", "dominated"], range=["#333333", "#bbbbbb"])
    points = (
        alt.Chart(frame)
        .mark_circle(size=80, opacity=0.9)
        .encode(
            x=x,
            y=y,
            color=alt.Color("on the front:N", title="", scale=front_colours),
            tooltip=tooltip,
        )
    )
    front = (
        alt.Chart(frame[frame["pareto"]].sort_values("clean_cost"))
        .mark_line(strokeDash=[4, 3], color="#555")
        .encode(x=x, y=y)
    )
    chosen = (
        alt.Chart(frame[frame["chosen"]])
        .mark_point(size=300, shape="circle", filled=False, strokeWidth=2, color="#d62728")
        .encode(x=x, y=y, tooltip=tooltip)
    )
    labels = (
        alt.Chart(frame[frame["chosen"] | (frame["spec"] == IDENTITY)])
        .mark_text(align="left", dx=10, dy=-8)
        .encode(x=x, y=y, text="spec:N")
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#999").encode(y="y:Q")
    return (zero + front + points + chosen + labels).properties(
        width=520, height=320, title="Emphasis search on validation: clean cost against gain"
    )


def _measured_twice(members: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate and split: `cost` and `gain` on validation, then on test."""
    splits = [
        ("validation", "clean_cost", "robustness_gain"),
        ("test", "test_clean_cost", "test_robustness_gain"),
    ]
    return pd.concat(
        [members.assign(split=s, cost=members[c], gain=members[g]) for s, c, g in splits],
        ignore_index=True,
    )


def front_on_test_chart(search: pd.DataFrame, variants: Variants = None) -> Chart:
    """The Pareto front measured twice: each front member's clean cost (x) and robustness gain
    (y) on validation (the search, circles) and re-measured on test by the sweep (its variant,
    diamonds), a segment from one to the other, each split's front joined by a line; one colour
    per sweep variant. `search`: search.csv with `variant` and the test columns. Without
    `search.evaluate_front` only normal and the chosen transform have test numbers: those."""
    members = measured_on_test(search)
    if members.empty:
        return empty_chart(f"not re-measured on test ({SEARCH_TABLE} has no test numbers)")
    title = "Pareto front on validation (search) and re-measured on test (sweep)"
    if not front_remeasured(members):
        title = "Chosen transform on validation and on test (search.evaluate_front off)"
    both = _measured_twice(members)
    members = members.assign(cost=members["clean_cost"], gain=members["robustness_gain"])
    tooltip = [alt.Tooltip("split:N", title="measured on"), *_search_tooltips(members)]
    x = alt.X("cost:Q", title=COST_TITLE)
    y = alt.Y("gain:Q", title=GAIN_TITLE)
    colour = variant_color(members, variants)
    moves = (
        alt.Chart(members)
        .mark_rule(strokeWidth=2, opacity=0.5)
        .encode(x=x, y=y, x2="test_clean_cost:Q", y2="test_robustness_gain:Q", color=colour)
    )
    fronts = (
        alt.Chart(both)
        .mark_line(color="#555", opacity=0.7)
        .encode(
            x=x,
            y=y,
            order="cost:Q",
            strokeDash=alt.StrokeDash(
                "split:N",
                title="front on",
                scale=alt.Scale(domain=["validation", "test"], range=[[4, 3], [1, 0]]),
            ),
        )
    )
    points = (
        alt.Chart(both)
        .mark_point(filled=True, size=110, opacity=0.9)
        .encode(
            x=x,
            y=y,
            color=colour,
            shape=alt.Shape(
                "split:N",
                title="measured on",
                scale=alt.Scale(domain=["validation", "test"], range=["circle", "diamond"]),
            ),
            tooltip=tooltip,
        )
    )
    labels = (
        alt.Chart(both[both["split"] == "test"])
        .mark_text(align="left", dx=9, dy=-7)
        .encode(x=x, y=y, text="variant:N")
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#999").encode(y="y:Q")
    return (zero + moves + fronts + points + labels).properties(width=520, height=320, title=title)


def comparison_chart(
    comparison: pd.DataFrame, variants: Variants = None, labels: tuple[str, str] = ("A", "B")
) -> Chart:
    """Two runs compared: accuracy of run B − run A per family (panel), attribute (x) and
    variant (colour), with its 95% CI. `comparison`: `dashboards.compare.compare_runs`'s table
    (paired or unpaired, as its `method` column says)."""
    frame = comparison.dropna(subset=["difference"])
    if frame.empty:
        return empty_chart("no results shared by both runs")
    frame = frame.rename(columns={"ci_low": "diff_ci_low", "ci_high": "diff_ci_high"})
    first, second = labels
    tooltip = [
        alt.Tooltip("family:N"),
        alt.Tooltip("variant:N"),
        alt.Tooltip("attribute:N"),
        alt.Tooltip("method:N"),
        alt.Tooltip("accuracy_a:Q", title=f"accuracy {first}", format=".3f"),
        alt.Tooltip("accuracy_b:Q", title=f"accuracy {second}", format=".3f"),
        alt.Tooltip("difference:Q", format="+.4f"),
        alt.Tooltip("diff_ci_low:Q", title="95% CI low", format="+.4f"),
        alt.Tooltip("diff_ci_high:Q", title="95% CI high", format="+.4f"),
        alt.Tooltip("n:Q", title="images (paired) or rows' samples"),
    ]
    order = [str(f) for f in Family]
    families = [f for f in order if f in set(frame["family"])]
    return _difference_grid(
        frame,
        variants,
        tooltip,
        y_title=f"accuracy difference, {second} − {first} (fraction)",
        families=families,
        title=f"{second} − {first}: accuracy difference per variant (95% CI)",
        columns=3,
        step=18,  # five families, three a row: they fit the page
    )
