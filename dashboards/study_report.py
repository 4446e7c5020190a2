"""`iamt study`'s report: STUDY_DIR/study.html, the verdict first, then its plot and tables.

A study trains one run per member (grid point × training seed) into STUDY_DIR/members/ and
writes three tables beside them (iamt/rundir.py: study.csv, study_seeds.csv, study_grid.csv).
This module reads those tables only (pandas, Altair and the standard library: no torch, like
`dashboards.report`) and holds what both the static page and the dashboard's Study page show:
the verdict rows and sentences, and `study_effect_chart`, the one plot of the study.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import altair as alt
import pandas as pd

# The run report's page, table and plot helpers and the charts' house helpers (a placeholder,
# one x-axis title under a facet grid): the study report looks and reads like a run's.
from dashboards import charts
from dashboards.report import Canvas, html_page, html_table
from dashboards.rundata import run_variants, study_members, variant_order
from dashboards.verdict import ALPHA
from iamt.io import write_text  # pandas and the standard library only: no torch
from iamt.rundir import (
    PLOTS,
    REPORT,
    STUDY_CONFIG,
    STUDY_GRID,
    STUDY_MEMBERS,
    STUDY_REPORT,
    STUDY_SEEDS,
    STUDY_TABLE,
    RunDataError,
    read_csv,
)
from iamt.vocabulary import POOLED_ATTRIBUTE, Family, StudyVerdict

# The verdicts and the pooled-attribute label robustness/study.py writes (iamt.vocabulary).
HELPS, HURTS, NO_EFFECT = (
    StudyVerdict.HELPS.value,
    StudyVerdict.HURTS.value,
    StudyVerdict.NO_EFFECT.value,
)
POOLED = POOLED_ATTRIBUTE
FAMILIES = (Family.CLEAN, Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL)
EFFECT_TITLE = "effect, variant − normal (accuracy points)"
EFFECT_PLOT = "study_effects"  # the plot's PNG stem, and the id of its embedded spec
SLOT_PX = 28  # the plot's width per x-offset slot (a variant's interval, or its seed dots)
ACROSS_SEEDS, ONE_SEED = "across seeds (95% CI)", "one seed"  # the plot's two kinds of mark
ALL_NO_EFFECT = (
    f"Every verdict is “{NO_EFFECT}”: at no grid point does any variant help or hurt "
    "consistently across the training seeds, in any family or attribute."
)


@dataclass(frozen=True)
class StudyFiles:
    """What a study report reads: study.csv is required, the rest may be missing."""

    root: Path
    table: pd.DataFrame  # study.csv
    seeds: pd.DataFrame | None  # study_seeds.csv
    grid: pd.DataFrame | None  # study_grid.csv
    members: list[Path]

    @property
    def name(self) -> str:
        return self.root.name


def read_study(study_dir: Path) -> StudyFiles:
    """The tables of a study; RunDataError naming the file when study.csv is missing or a
    table is malformed (iamt.rundir.read_csv checks each against its schema)."""
    root = Path(study_dir)
    if not (root / STUDY_TABLE).is_file():
        raise RunDataError(
            f"{STUDY_TABLE} is missing in {root}: `iamt study` writes it once every member is "
            "trained and evaluated"
        )

    def optional(name: str) -> pd.DataFrame | None:
        return read_csv(root / name) if (root / name).is_file() else None

    return StudyFiles(
        root=root,
        table=read_csv(root / STUDY_TABLE),
        seeds=optional(STUDY_SEEDS),
        grid=optional(STUDY_GRID),
        members=study_members(root),
    )


def study_variants(table: pd.DataFrame, members: Iterable[Path] = ()) -> list[str]:
    """The study's variants, with its members' (normal included), so that a variant gets the
    colour it has in each member's own report."""
    names: list[object] = list(table["variant"])
    for member in members:
        names += run_variants(member)
    return variant_order(names)


# --------------------------------------------------------------------------- the verdict


def grid_points(table: pd.DataFrame) -> list[str]:
    """The grid points in the order study.csv lists them (sorted by their label)."""
    return [str(point) for point in pd.unique(table["grid_point"])]


def ordered_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by grid point (study.csv's order), then family (clean, noise, corruption,
    adversarial), the pooled attribute first, then attribute and variant by name."""
    families = {str(family): i for i, family in enumerate(FAMILIES)}
    grid = {point: i for i, point in enumerate(grid_points(table))}
    keys = pd.DataFrame(
        {
            "grid": table["grid_point"].map(lambda g: grid[str(g)]),
            "family": table["family"].map(lambda f: families.get(str(f), len(families))),
            "pooled": (table["attribute"] != POOLED).astype(int),
            "attribute": table["attribute"].astype(str),
            "variant": table["variant"].astype(str),
        },
        index=table.index,
    )
    return table.loc[keys.sort_values(list(keys.columns), kind="stable").index]


def points(value: float) -> str:
    """An accuracy fraction as signed points ("+1.23"); "–" when missing."""
    return "–" if value is None or not math.isfinite(value) else f"{value * 100:+.2f}"


def effect_text(effect: float, low: float, high: float) -> str:
    """ "+1.23 points, 95% CI [−0.40, +2.90]"."""
    return f"{points(effect)} points, 95% CI [{points(low)}, {points(high)}]"


def sign_text(n_seeds: float, above: float, below: float) -> str:
    """ "2 of 3 seeds above 0, 0 below": the seeds whose own image-bootstrap CI excludes 0."""

    def count(value: float) -> str:
        return "?" if pd.isna(value) else str(int(value))

    return f"{count(above)} of {count(n_seeds)} seeds above 0, {count(below)} below"


def verdict_rows(table: pd.DataFrame, grid_point: str) -> pd.DataFrame:
    """One grid point's cells: variant, family, attribute, verdict, effect (points ± CI),
    the seeds' signs and the Holm-adjusted p."""
    rows = ordered_rows(table[table["grid_point"] == grid_point])
    return pd.DataFrame(
        {
            "variant": rows["variant"],
            "family": rows["family"],
            "attribute": rows["attribute"],
            "verdict": rows["verdict"],
            "effect": [
                effect_text(e, lo, hi)
                for e, lo, hi in zip(rows["effect"], rows["ci_low"], rows["ci_high"], strict=True)
            ],
            "seeds": [
                sign_text(n, a, b)
                for n, a, b in zip(
                    rows["n_seeds"], rows["seeds_above_0"], rows["seeds_below_0"], strict=True
                )
            ],
            "p_holm": rows["p_holm"],
        }
    ).reset_index(drop=True)


def grid_point_summary(rows: pd.DataFrame) -> list[str]:
    """One sentence per variant of a grid point's `verdict_rows`: where it helps, where it
    hurts, and in how many cells it has no consistent effect."""
    sentences = []
    for variant in variant_order(rows["variant"]):
        mine = rows[rows["variant"] == variant]
        parts = []
        for verdict in (HELPS, HURTS):
            cells = mine[mine["verdict"] == verdict]
            if not cells.empty:
                where = ", ".join(f"{r.family}/{r.attribute}" for r in cells.itertuples())
                parts.append(f"{verdict} in {where}")
        quiet = int((mine["verdict"] == NO_EFFECT).sum())
        parts.append(f"{NO_EFFECT} in {quiet} of {len(mine)} cells")
        sentences.append(f"{variant}: {'; '.join(parts)}.")
    return sentences


def every_verdict_is_no_effect(table: pd.DataFrame) -> bool:
    """True when the table has tests and none of them found an effect."""
    return not table.empty and bool((table["verdict"] == NO_EFFECT).all())


def statistics_note(table: pd.DataFrame) -> str:
    """How the verdicts and intervals were made, with the number of tests adjusted for."""
    return (
        f"Verdicts use Holm-adjusted p-values (p_holm, α = {ALPHA:g}) over every test in the "
        f"table ({len(table)} tests: grid point × variant × family × attribute): “{HELPS}” "
        f"(effect > 0) or “{HURTS}” (effect < 0) when p_holm < {ALPHA:g}, “{NO_EFFECT}” "
        "otherwise. The effect is the mean "
        "over training seeds of the paired accuracy difference variant − normal on the same "
        "test images, in points; its 95% CI is a hierarchical bootstrap interval (seeds "
        "resampled, then images within each seed), so it counts both training-seed and image "
        "variance. “Seeds above 0” counts the seeds whose own image-bootstrap CI lies above 0."
    )


# --------------------------------------------------------------------------- the plot


def _effect_frame(table: pd.DataFrame, seeds: pd.DataFrame | None) -> pd.DataFrame:
    """The plot's rows, pooled attribute only, effects in points: one per grid point ×
    variant × family across seeds (kind ACROSS_SEEDS) and one per seed (ONE_SEED). `slot`
    puts each seed's dots just right of their cell's interval on the x offset."""
    families = [str(family) for family in FAMILIES]
    pooled = table[(table["attribute"] == POOLED) & table["family"].isin(families)]
    frames = [pooled.assign(kind=ACROSS_SEEDS, slot=pooled["variant"].astype(str))]
    if seeds is not None:
        own = seeds[(seeds["attribute"] == POOLED) & seeds["family"].isin(families)]
        frames.append(own.assign(kind=ONE_SEED, slot=own["variant"].astype(str) + " · seeds"))
    frame = pd.concat(frames, ignore_index=True)
    for column in ("effect", "ci_low", "ci_high"):
        frame[f"{column}_points"] = frame[column] * 100
    return frame


# The plot's tooltip fields (those a row has): name -> (Vega-Lite type, number format).
EFFECT_TOOLTIPS: dict[str, tuple[str, str | None]] = {
    "grid_point": ("N", None),
    "variant": ("N", None),
    "family": ("N", None),
    "kind": ("N", None),
    "seed": ("Q", None),
    "member": ("N", None),
    "effect_points": ("Q", "+.2f"),
    "ci_low_points": ("Q", "+.2f"),
    "ci_high_points": ("Q", "+.2f"),
    "p_holm": ("Q", ".3g"),
    "verdict": ("N", None),
    "seeds_above_0": ("Q", None),
    "seeds_below_0": ("Q", None),
}


def _effect_tooltips(frame: pd.DataFrame) -> list[alt.Tooltip]:
    return [
        alt.Tooltip(f"{name}:{kind}", format=fmt) if fmt else alt.Tooltip(f"{name}:{kind}")
        for name, (kind, fmt) in EFFECT_TOOLTIPS.items()
        if name in frame.columns
    ]


def study_effect_chart(
    table: pd.DataFrame, seeds: pd.DataFrame | None = None, variants: charts.Variants = None
) -> charts.Chart:
    """The study's one plot: per family (panel) and grid point (x), each variant's effect
    across seeds (points, variant − normal, pooled attribute "all") with its hierarchical
    bootstrap 95% CI as an error bar, and beside it each seed's own effect as a dot (from
    study_seeds.csv); colour by variant (`charts.variant_color`), a rule at zero."""
    frame = _effect_frame(table, seeds)
    if frame.empty:
        return charts.empty_chart(f"no pooled ({POOLED}) effects in {STUDY_TABLE}")
    shown = variant_order(frame["variant"])
    slots = [slot for variant in shown for slot in (variant, f"{variant} · seeds")]
    families = [str(f) for f in FAMILIES if str(f) in set(frame["family"])]
    base = alt.Chart().encode(
        x=alt.X("grid_point:N", title=None, sort=grid_points(frame), axis=alt.Axis(labelAngle=-30)),
        xOffset=alt.XOffset("slot:N", sort=slots, scale=alt.Scale(domain=slots)),
        color=charts.variant_color(frame, variants),
        tooltip=_effect_tooltips(frame),
    )
    # The points only (an error bar takes no shape): the legend tells interval from seed.
    shape = alt.Shape(
        "kind:N",
        title="mark",
        scale=alt.Scale(domain=[ACROSS_SEEDS, ONE_SEED], range=["diamond", "circle"]),
    )
    effect = alt.Y("effect_points:Q", title=EFFECT_TITLE)
    across = base.transform_filter(alt.datum.kind == ACROSS_SEEDS)
    errors = across.mark_errorbar(ticks=True).encode(
        y=alt.Y("ci_low_points:Q", title=EFFECT_TITLE), y2="ci_high_points:Q"
    )
    means = across.mark_point(filled=True, size=90).encode(y=effect, shape=shape)
    dots = (
        base.transform_filter(alt.datum.kind == ONE_SEED)
        .mark_point(filled=True, size=35, opacity=0.6)
        .encode(y=effect, shape=shape)
    )
    zero = alt.Chart().mark_rule(color="grey", strokeDash=[4, 4]).encode(y=alt.datum(0))
    grid = (
        alt.layer(zero, errors, means, dots, data=frame)
        .properties(width=alt.Step(SLOT_PX), height=240)
        .facet(facet=alt.Facet("family:N", title="family", sort=families), columns=4)
    )
    title = "Effect across training seeds, pooled over attributes (hierarchical bootstrap 95% CI)"
    return charts.one_x_title(grid, "grid point", title)


# --------------------------------------------------------------------------- the page


VERDICT_STYLE = {HELPS: "pass", HURTS: "fail"}  # report.py's CSS classes
VERDICT_TEXT_COLUMNS = ("variant", "family", "attribute", "verdict", "effect", "seeds")


def _verdict_table(rows: pd.DataFrame) -> str:
    """A grid point's `verdict_rows` as an HTML table, "helps" green and "hurts" red."""
    head = "".join(
        f'<th class="{"text" if c in VERDICT_TEXT_COLUMNS else ""}">{html.escape(c)}</th>'
        for c in rows
    )
    body = []
    for _, row in rows.iterrows():
        cells = []
        for column in rows:
            style = "text" if column in VERDICT_TEXT_COLUMNS else ""
            if column == "verdict":
                style += f" {VERDICT_STYLE.get(str(row[column]), '')}"
            value = row[column]
            if isinstance(value, float):  # p_holm: "–" when the cell had no test
                value = f"{value:.3g}" if math.isfinite(value) else "–"
            cells.append(f'<td class="{style.strip()}">{html.escape(str(value))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _verdict_section(table: pd.DataFrame) -> list[str]:
    """The page's opening: the verdict per grid point, and how it was reached."""
    sections = [
        '<h2 id="verdict">Verdict: does emphasis help, across training seeds?</h2>',
        f"<p>{html.escape(statistics_note(table))}</p>",
    ]
    if table.empty:
        sections.append(
            f"<p><b>{html.escape(STUDY_TABLE)} has no rows: nothing was tested.</b></p>"
        )
    if every_verdict_is_no_effect(table):
        sections.append(f"<p><b>{html.escape(ALL_NO_EFFECT)}</b></p>")
    for grid_point in grid_points(table):
        rows = verdict_rows(table, grid_point)
        sentences = "".join(f"<li>{html.escape(s)}</li>" for s in grid_point_summary(rows))
        sections += [
            f"<h3>Grid point <code>{html.escape(grid_point)}</code></h3>",
            f"<ul>{sentences}</ul>",
            _verdict_table(rows),
        ]
    return sections


def _plot_section(files: StudyFiles, canvas: Canvas) -> list[str]:
    """The one plot, as PNG (vl-convert, like the run report), with its Vega-Lite spec
    embedded beside it so that the plot can be reopened in any Vega-Lite viewer."""
    try:
        chart = study_effect_chart(files.table, files.seeds, canvas.variants)
    except (KeyError, ValueError) as error:
        canvas.notes.append(f"{EFFECT_PLOT}: not drawn ({error})")
        return []
    spec = json.dumps(chart.to_dict()).replace("</", "<\\/")  # never ends the <script>
    seeds = "" if files.seeds is not None else f" ({STUDY_SEEDS} is missing: no seed dots)"
    return [
        "<h2>Effect per family and grid point</h2>",
        "<p>Each variant's effect across seeds (diamond, with its hierarchical bootstrap 95% "
        "CI) and, beside it, each training seed's own effect (dots), pooled over attributes "
        f"(attribute “{POOLED}”), in accuracy points{html.escape(seeds)}.</p>",
        canvas.plot(EFFECT_PLOT, lambda: chart),
        f'<script type="application/json" id="{EFFECT_PLOT}-spec">{spec}</script>',
    ]


def grid_table(grid: pd.DataFrame | None) -> pd.DataFrame | None:
    """study_grid.csv with the difference as text in points; None when absent or empty."""
    if grid is None or grid.empty:
        return None
    bounds = zip(grid["difference"], grid["ci_low"], grid["ci_high"], strict=True)
    return grid.assign(difference_points=[effect_text(d, lo, hi) for d, lo, hi in bounds])


def _tables_section(files: StudyFiles) -> list[str]:
    """The full study.csv, then the comparison between grid points when there is one."""
    text = ["grid_point", "variant", "family", "attribute", "verdict"]
    sections = [
        f"<h2>Every test ({html.escape(STUDY_TABLE)})</h2>",
        "<p>effect, ci_low and ci_high are accuracy fractions (× 100 for points); "
        "normal_accuracy is the mean over seeds, normal_accuracy_sd its between-seed standard "
        "deviation.</p>",
        html_table(ordered_rows(files.table), text),
    ]
    grid = grid_table(files.grid)
    if grid is not None:
        sections += [
            f"<h2>Between grid points ({html.escape(STUDY_GRID)})</h2>",
            "<p>difference = the effect at grid_point_b − the effect at grid_point_a, with "
            "its 95% CI.</p>",
            html_table(grid, ["variant", "family", "attribute", "grid_point_a", "grid_point_b"]),
        ]
    return sections


def member_places(seeds: pd.DataFrame | None) -> dict[str, str]:
    """{member: "grid point …, seed …"}, from study_seeds.csv ({} without it)."""
    if seeds is None:
        return {}
    rows = seeds.drop_duplicates("member").itertuples()
    return {str(row.member): f"grid point {row.grid_point}, seed {row.seed}" for row in rows}


def _members_section(files: StudyFiles) -> list[str]:
    places, items = member_places(files.seeds), []
    for member in files.members:
        name, place = member.name, places.get(member.name)
        label = html.escape(name) + (f" ({html.escape(place)})" if place else "")
        if (member / REPORT).is_file():
            href = f"{STUDY_MEMBERS}/{quote(name)}/{REPORT}"  # relative: the study can move
            items.append(f'<li><a href="{href}">{label}</a></li>')
        else:
            items.append(f"<li>{label}: no {html.escape(REPORT)} yet</li>")
    if not items:
        return ["<h2>Members</h2>", f"<p>No member runs in {html.escape(STUDY_MEMBERS)}/.</p>"]
    return ["<h2>Members</h2>", f"<ul>{''.join(items)}</ul>"]


def _config_section(root: Path) -> list[str]:
    path = root / STUDY_CONFIG
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    return [f"<h2>Study file ({html.escape(STUDY_CONFIG)})</h2>", f"<pre>{html.escape(text)}</pre>"]


def write_study_report(study_dir: Path) -> Path:
    """Write STUDY_DIR/study.html (atomically) and its plot, STUDY_DIR/plots/*.png; returns
    the page's path. RunDataError naming the file when study.csv is missing or malformed."""
    files = read_study(study_dir)
    canvas = Canvas(files.root / PLOTS, variants=study_variants(files.table, files.members))
    sections = [
        f"<h1>Study: {html.escape(files.name)}</h1>",
        f'<p class="meta">{len(files.members)} member runs, {len(grid_points(files.table))} '
        "grid point(s)</p>",
        *_verdict_section(files.table),
        *_plot_section(files, canvas),
        *_tables_section(files),
        *_members_section(files),
        *_config_section(files.root),
    ]
    if canvas.notes:  # last: why a chart above could not be drawn
        sections += ["<h2>Notes</h2>", "<ul>"]
        sections += [f"<li>{html.escape(note)}</li>" for note in canvas.notes] + ["</ul>"]
    target = files.root / STUDY_REPORT
    write_text(target, html_page(f"study {files.name}", sections))
    return target
