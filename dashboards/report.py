"""`iamt report RUN_DIR`: a static, offline HTML report of one run, with PNG plots.

It reads the run directory only (like the dashboard, it imports neither torch nor Ray) and
draws the same Altair charts as the dashboard (`dashboards.charts`), saved as PNG through
vl-convert. `report.html` is self-contained apart from `plots/*.png` beside it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from dashboards import charts
from dashboards.rundata import run_variants
from dashboards.verdict import verdict
from iamt.io import write_text  # pandas and the standard library only: no torch
from iamt.rundir import (
    CLEAN,
    DRIFT,
    FAILURES,
    IMPORTANCE,
    MANIFEST,
    MASKING_COLUMNS,
    PLOTS,
    RESULTS,
    SEARCH_REPORT,
    SEARCH_TABLE,
    SUMMARY,
    RunDataError,
    RunDirectory,
)
from iamt.vocabulary import NORMAL, Engine, Family

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
.meta { color: #666; } .fail { color: #b00020; font-weight: bold; } .pass { color: #1b7f3b; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return (
            f"{value:.{digits}f}" if abs(value) >= 10 ** (-digits) or value == 0 else f"{value:.1e}"
        )
    return html.escape(str(value))


def html_table(frame: pd.DataFrame, text_columns: Iterable[str] = ()) -> str:
    text = set(text_columns)
    head = "".join(
        f'<th class="{"text" if c in text else ""}">{html.escape(str(c))}</th>' for c in frame
    )
    rows = []
    for _, row in frame.iterrows():
        cells = "".join(
            f'<td class="{"text" if c in text else ""}">{_fmt(row[c])}</td>' for c in frame
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _save(chart: alt.TopLevelMixin, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    chart.save(str(temporary), scale_factor=1.5)
    temporary.replace(path)
    return f'<img src="{PLOTS}/{html.escape(path.name)}" alt="{html.escape(path.stem)}">'


def _plot(
    name: str, build: Callable[[], alt.TopLevelMixin | None], plots: Path, notes: list[str]
) -> str:
    """Draw one chart; a chart that cannot be drawn becomes a note, not a crash."""
    try:
        chart = build()
    except (KeyError, ValueError) as error:
        notes.append(f"{name}: not drawn ({error})")
        return ""
    return "" if chart is None else _save(chart, plots / f"{name}.png")


def _headline(summary: pd.DataFrame) -> pd.DataFrame:
    family = summary[(summary["level"] == "family") & summary["difference"].notna()]
    columns = ["variant", "family", "attribute", "n", "accuracy", "difference"]
    columns += ["diff_ci_low", "diff_ci_high", "mcnemar_p", "p_holm"]
    return family[columns].sort_values(["variant", "family", "attribute"])


def _engines(results: pd.DataFrame | None) -> str:
    """Which implementation corrupted the images, per corruption (the `engine` column)."""
    if results is None or "engine" not in results.columns:
        return "imagecorruptions (reference)"
    corrupted = results[results["family"] == Family.CORRUPTION]
    if corrupted.empty:
        return "none run"
    by_engine = corrupted.groupby("engine")["perturbation"].unique()
    labels = {
        Engine.NATIVE: "native torch port (passed the fidelity gate against imagecorruptions)",
        Engine.REFERENCE: "imagecorruptions (reference, per image)",
    }
    return "; ".join(
        f"{labels.get(engine, engine)}: {', '.join(sorted(names))}"
        for engine, names in by_engine.items()
    )


def _methods(
    config: dict[str, Any], manifest: dict[str, Any], results: pd.DataFrame | None = None
) -> str:
    data, robustness = config.get("data", {}), config.get("robustness", {})
    variants = manifest.get("variants") or config.get("emphasis", {}).get("variants", {})
    attacks = robustness.get("attacks", {})
    noise, corruptions = robustness.get("noise", {}), robustness.get("corruptions", {})
    rows = [
        ("dataset", f"{data.get('name')} ({data.get('image_size')} px), seed {config.get('seed')}"),
        (
            "splits",
            f"train {data.get('n_train')}, validation {data.get('n_val')} (channel importance), "
            f"test {data.get('n_test')} (every accuracy in this report)",
        ),
        ("model", ", ".join(f"{k}={v}" for k, v in config.get("model", {}).items())),
        ("variants (mask transforms)", "; ".join(f"{k}: {v}" for k, v in variants.items())),
        (
            "noise",
            f"{', '.join(noise.get('types', []))} at strengths {noise.get('strengths')}, "
            f"{noise.get('n_samples')} test images",
        ),
        (
            "corruptions",
            f"{corruptions.get('names')} (ImageNet-C) at severities "
            f"{corruptions.get('severities')}, {corruptions.get('n_samples')} test images, "
            "seeded from each job",
        ),
        ("corruption engine", _engines(results)),
        (
            "attacks",
            "; ".join(
                f"{m['name']}({', '.join(f'{k}={v}' for k, v in (m.get('params') or {}).items())})"
                f" on {m.get('n_samples') or attacks.get('n_samples')} images"
                + (f" at ε {m['epsilons']}" if m.get("epsilons") else "")
                for m in attacks.get("methods", [])
            )
            + f". L∞ ε {attacks.get('linf_epsilons')}, L2 ε {attacks.get('l2_epsilons')}; "
            "bounds (0, 1); one attribute at a time; PGD step 2.5·ε/steps",
        ),
        *_statistics_rows(),
        ("seeds", f"run seed {config.get('seed')}; each job's seed is derived from its job_id"),
    ]
    cell = '<tr><th class="text">{}</th><td class="text">{}</td></tr>'
    body = "".join(cell.format(html.escape(k), html.escape(str(v))) for k, v in rows)
    return f"<table>{body}</table>"


def _statistics_rows() -> list[tuple[str, str]]:
    """The definitions behind every interval, test and corruption error of the report."""
    return [
        (
            "statistics",
            "Wilson 95% intervals for accuracies; emphasized − normal on the same images with a "
            "percentile bootstrap 95% CI (images resampled when pooling perturbations) and an "
            "exact McNemar test; 'significant' in the verdict also needs the McNemar p below "
            "0.05 after Holm's correction (p_holm) over each variant's family-level tests",
        ),
        (
            "corruption error",
            "mCE = mean over the 15 ImageNet-C benchmark corruptions (imagecorruptions' "
            "'common') of CE_c = Σ_s E_s,c / Σ_s E^normal_s,c, with the normal model as the "
            "baseline (Hendrycks & Dietterich 2019; their baseline is AlexNet); relative mCE "
            "subtracts each model's clean error first. The 4 validation corruptions "
            "(speckle_noise, gaussian_blur, spatter, saturate) give mce_validation, apart. "
            "mean corruption accuracy = the mean accuracy over the benchmark corruptions × "
            "severities (RobustBench's corruption accuracy). Computed over the benchmark "
            "corruptions the sweep has (mce_corruptions of 15)",
        ),
        (
            "gradient masking",
            "per variant and attribute, on the attacks' clean test images: the fraction with a "
            "zero (gradient_zero_fraction) or NaN/infinite (gradient_nonfinite_fraction) input "
            "gradient of the margin loss max_{j≠y} z_j − z_y (flag: more than 2%); the median "
            "spread of the logits ‖z − mean z‖₂ ÷ the normal model's (logit_scale_ratio; flag: "
            "outside [0.5, 2]); a minimisation attack's median distance growing > 2% while FGSM "
            "robust accuracy falls > 2 points. With the Carlini et al. checks (monotone in ε, "
            "white-box beats transfer, gradient attacks beat the decision-based one), a failed "
            "flag marks the variant 'unreliable' in the verdict, as RobustBench does "
            "(Croce & Hein 2020; Athalye et al. 2018)",
        ),
    ]


def _sanity_line(summary: pd.DataFrame) -> str:
    """The sanity flags in one line: a failed check weakens every adversarial claim above."""
    if "sanity_all" not in summary.columns:
        return ""
    flags = summary[(summary["level"] == "family") & summary["sanity_all"].notna()]
    if flags.empty:
        return ""
    failed = flags[flags["sanity_all"].astype(str).str.lower() != "true"]
    if failed.empty:
        return '<p class="pass">Sanity checklist: every check passed (details below).</p>'
    which = ", ".join(sorted({f"{r.variant}/{r.attribute}" for r in failed.itertuples()}))
    return (
        f'<p class="fail">Sanity checklist: a check failed for {html.escape(which)}; read the '
        "adversarial differences with care (details below).</p>"
    )


def _search_section(
    files: RunFiles, plots: Path, notes: list[str], variants: list[str]
) -> list[str]:
    """The emphasis search: where the searched variant came from, its Pareto front on
    validation and, when `search.evaluate_front` was on, the front re-measured on test."""
    table, search = files.search_table, files.search
    if table is None or search is None:
        return []
    chosen = search.get("chosen")
    choice = (
        f"It chose <code>{html.escape(str(chosen['spec']))}</code> by the rule: "
        f"{html.escape(str(search.get('rule')))}. The sweep evaluates it on the test split as "
        f"variant <code>{html.escape(str(search.get('variant')))}</code>."
        if chosen
        else "No transform met the rule, so no searched variant was evaluated."
    )
    return [
        "<h3>Emphasis search (validation split)</h3>",
        f"<p>{len(table)} candidate transforms, each measured on the same "
        f"{search.get('n')} validation images, clean and under "
        f"{html.escape(', '.join(search.get('conditions', [])))}. {choice}</p>",
        _plot("pareto", lambda: charts.pareto_chart(table), plots, notes),
        *_front_on_test_section(table, plots, notes, variants),
    ]


def _front_on_test_section(
    table: pd.DataFrame, plots: Path, notes: list[str], variants: list[str]
) -> list[str]:
    """The Pareto front a second time, re-measured on the test split by the sweep."""
    sections = ["<h3>The Pareto front re-measured on the test split</h3>"]
    if not charts.front_remeasured(table):
        sections.append(
            "<p>The front was not re-measured on the test split (<code>search.evaluate_front"
            "</code> off): the front above is validation only.</p>"
        )
        if charts.measured_on_test(table).empty:
            return sections
    sections += [
        "<p>Measured twice: by the search on validation (circles) and by the sweep on test, "
        "each as its own variant (diamonds, labelled), joined by a segment; clean cost and "
        "robustness gain in points against the normal model on the same split.</p>",
        _plot("pareto_test", lambda: charts.front_on_test_chart(table, variants), plots, notes),
    ]
    return sections


def prediction_table(search: dict[str, Any] | None, summary: pd.DataFrame) -> pd.DataFrame:
    """Per family: the searched transform's gain predicted on validation (search.json) next to
    the difference measured on test (summary.csv, family level, mean over attributes, with the
    smallest and largest attribute), in points. Empty without a searched variant."""
    columns = ["family", "predicted_on_validation", "measured_on_test", "test_min", "test_max"]
    chosen = (search or {}).get("chosen")
    variant = (search or {}).get("variant")
    if not chosen or "difference" not in summary.columns:
        return pd.DataFrame(columns=columns)
    rows = []
    for family in (Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL):
        measured = summary[
            (summary["level"] == "family")
            & (summary["variant"] == variant)
            & (summary["family"] == family)
            & summary["difference"].notna()
        ]["difference"]
        predicted = chosen.get(f"{family}_gain")
        if measured.empty and predicted is None:
            continue
        rows.append(
            {
                "family": str(family),
                "predicted_on_validation": np.nan if predicted is None else predicted,
                "measured_on_test": measured.mean() * 100,
                "test_min": measured.min() * 100,
                "test_max": measured.max() * 100,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _prediction_section(search: dict[str, Any] | None, summary: pd.DataFrame) -> list[str]:
    table = prediction_table(search, summary)
    if table.empty:
        return []
    return [
        "<h3>Did the search generalise? Predicted on validation vs measured on test</h3>",
        "<p>The searched transform's gain per family (points, variant − normal) as the search "
        "predicted it on the validation split, and as the sweep measured it on the test split "
        "(mean over attributes, with the smallest and largest).</p>",
        html_table(table, ["family"]),
    ]


DRIFT_PAIR = ["job_id", "attribute"]


def drift_stability(drift: pd.DataFrame) -> pd.DataFrame:
    """Emphasized vs normal mask stability, from drift.csv: per emphasized variant and family
    (and `all` families), the mean mask cosine of the variant and of the normal model over the
    (job, attribute) pairs both have, their paired mean difference (variant − normal; > 0: the
    variant's masks move less) and its 95% t interval over the pairs."""
    columns = ["variant", "family", "pairs", "mask_cosine", "normal_mask_cosine"]
    columns += ["difference", "ci_low", "ci_high"]
    values = drift.dropna(subset=["mask_cosine"])
    normal = values[values["variant"] == NORMAL].set_index(DRIFT_PAIR)["mask_cosine"]
    rows = []
    for variant in sorted(set(values["variant"]) - {NORMAL}):
        mine = values[values["variant"] == variant].set_index(DRIFT_PAIR)
        paired = mine[["family", "mask_cosine"]].join(normal.rename("normal"), how="inner")
        for family in ["all", *sorted(paired["family"].unique())]:
            part = paired if family == "all" else paired[paired["family"] == family]
            differences = (part["mask_cosine"] - part["normal"]).to_numpy(dtype=float)
            n = len(differences)
            mean = float(differences.mean()) if n else math.nan
            half = math.nan
            if n > 1:
                spread = float(differences.std(ddof=1)) / math.sqrt(n)
                half = float(student_t.ppf(0.975, n - 1)) * spread
            rows.append(
                {
                    "variant": variant,
                    "family": family,
                    "pairs": n,
                    "mask_cosine": float(part["mask_cosine"].mean()) if n else math.nan,
                    "normal_mask_cosine": float(part["normal"].mean()) if n else math.nan,
                    "difference": mean,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def drift_answer(stability: pd.DataFrame) -> str:
    """The answer to "does emphasis make the masks more stable?", one sentence per emphasized
    variant, from the `all` rows of `drift_stability`; significant only when the 95% CI
    excludes 0."""
    pooled = stability[stability["family"] == "all"]
    if pooled.empty:
        return "No emphasized variant and normal model share drift measurements to compare."
    answers = []
    for row in pooled.itertuples():
        numbers = (
            f"mean mask cosine {row.mask_cosine:.5f} vs normal {row.normal_mask_cosine:.5f}, "
            f"difference {row.difference:+.2e}, 95% CI [{row.ci_low:+.2e}, {row.ci_high:+.2e}], "
            f"{row.pairs} (job, attribute) pairs"
        )
        if not np.isfinite(row.ci_low) or not np.isfinite(row.ci_high):
            answers.append(f"{row.variant}: too few pairs for an interval ({numbers}).")
        elif row.ci_low > 0:
            answers.append(f"{row.variant}: yes, its masks move less than normal's ({numbers}).")
        elif row.ci_high < 0:
            answers.append(f"{row.variant}: no, its masks move more than normal's ({numbers}).")
        else:
            answers.append(f"{row.variant}: no significant difference ({numbers}).")
    return " ".join(answers)


def _drift_section(drift: pd.DataFrame | None, canvas: Canvas) -> list[str]:
    """Attention drift (drift.csv, optional): the drift plot and whether emphasis makes the
    masks more stable under perturbation."""
    heading = "<h3>Attention drift: does emphasis make the masks more stable?</h3>"
    if drift is None:
        return [heading, f"<p>This run has no {DRIFT} (evaluated before drift existed).</p>"]
    if drift.empty:
        return [heading, f"<p>{DRIFT} has no rows (no noise, corruption or ε attack).</p>"]
    stability = drift_stability(drift)
    return [
        heading,
        f"<p><b>Answer.</b> {html.escape(drift_answer(stability))}</p>",
        "<p>Mask cosine: per image, the cosine similarity between a variant's masks (after its "
        "transform) on the clean and on the perturbed image, averaged over the images; 1 = "
        "unmoved. Differences pair each emphasized variant with the normal model on the same "
        "job and attribute (the same clean and perturbed images, except under white-box "
        "attacks, where each variant faces its own adversarials); 95% t intervals over the "
        "pairs, which share images, so read them as approximate.</p>",
        canvas.plot("drift", lambda: charts.drift_chart(drift, variants=canvas.variants)),
        html_table(_drift_display(stability), ["variant", "family"]),
    ]


def _drift_display(stability: pd.DataFrame) -> pd.DataFrame:
    """The stability table as text: cosines near 1 need more digits than `_fmt` gives."""
    shown = stability.astype(object)
    for column, spec in [("mask_cosine", ".5f"), ("normal_mask_cosine", ".5f")] + [
        (column, "+.2e") for column in ("difference", "ci_low", "ci_high")
    ]:
        shown[column] = [
            f"{value:{spec}}" if math.isfinite(value) else "–" for value in stability[column]
        ]
    return shown


@dataclass(frozen=True)
class RunFiles:
    """What the report reads from a run directory: every file but the manifest is optional."""

    run: RunDirectory
    manifest: dict[str, Any]
    config: dict[str, Any]
    summary: pd.DataFrame | None
    clean: pd.DataFrame | None
    importance: pd.DataFrame | None
    failures: pd.DataFrame | None
    results: pd.DataFrame | None
    search_table: pd.DataFrame | None
    search: dict[str, Any] | None

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.run.root.name))


def read_run(run_dir: Path) -> RunFiles:
    """Read the files of a run; RunDataError when `run_dir` is no run or a file is malformed."""
    run = RunDirectory(run_dir)
    if not run.manifest.is_file():
        raise RunDataError(f"{run.root} is not a run directory (no {MANIFEST})")
    return RunFiles(
        run=run,
        manifest=run.read_manifest() or {},
        config=run.read_config() or {},
        summary=run.read_csv(SUMMARY),
        clean=run.read_csv(CLEAN),
        importance=run.read_csv(IMPORTANCE),
        failures=run.read_csv(FAILURES),
        results=run.read_csv(RESULTS),
        search_table=run.read_csv(SEARCH_TABLE),
        search=run.read_json(SEARCH_REPORT),
    )


@dataclass
class Canvas:
    """Where the report's plots go, and the notes on the charts that could not be drawn."""

    plots: Path
    notes: list[str] = field(default_factory=list)

    variants: list[str] = field(default_factory=list)  # the run's, for one colour per variant

    def plot(self, name: str, build: Callable[[], alt.TopLevelMixin | None]) -> str:
        return _plot(name, build, self.plots, self.notes)


def _header(files: RunFiles) -> list[str]:
    manifest = files.manifest
    return [
        f"<h1>Robustness report: {html.escape(files.name)}</h1>",
        f'<p class="meta">status {_fmt(manifest.get("status"))} · dataset '
        f"{_fmt(manifest.get('dataset'))} · created {_fmt(manifest.get('created'))} · "
        f"git {_fmt((manifest.get('environment') or {}).get('git_sha'))}</p>",
    ]


def _clean_section(clean: pd.DataFrame | None, canvas: Canvas) -> list[str]:
    if clean is None:
        return []
    return [
        "<h2>Clean accuracy (test split)</h2>",
        canvas.plot("clean_accuracy", lambda: charts.clean_accuracy_chart(clean, canvas.variants)),
        html_table(
            clean[["variant", "transform", "attribute", "n", "accuracy", "ci_low", "ci_high"]],
            ["variant", "transform", "attribute"],
        ),
    ]


def _verdict_section(files: RunFiles, summary: pd.DataFrame, canvas: Canvas) -> list[str]:
    """Does emphasis help? The verdict, the paired differences, the search and the drift."""
    return [
        "<h2>Does emphasis help? Emphasized − normal</h2>",
        f"<p><b>Verdict.</b> {html.escape(verdict(summary, files.search))}</p>",
        "<p>Accuracy difference on the same images, pooled over each family, with its "
        "95% bootstrap CI and McNemar p. A CI that contains 0 is no significant "
        "difference. The model was trained on the train split; channel importance and "
        "the emphasis search used the validation split; every number in this section is "
        "on the test split.</p>",
        canvas.plot("headline", lambda: charts.headline_chart(summary, variants=canvas.variants)),
        html_table(_headline(summary), ["variant", "family", "attribute"]),
        _sanity_line(summary),
        *_search_section(files, canvas.plots, canvas.notes, canvas.variants),
        *_prediction_section(files.search, summary),
        *_drift_section(files.run.read_csv(DRIFT), canvas),
    ]


def _perturbation_section(summary: pd.DataFrame, canvas: Canvas) -> list[str]:
    """Noise and corruptions: accuracy against strength, the difference heatmap and mCE."""
    sections = [
        "<h2>Noise and corruptions</h2>",
        canvas.plot(
            "noise_curves",
            lambda: charts.strength_curves_chart(summary, Family.NOISE, variants=canvas.variants),
        ),
        canvas.plot(
            "corruption_curves",
            lambda: charts.strength_curves_chart(
                summary, Family.CORRUPTION, variants=canvas.variants
            ),
        ),
        canvas.plot(
            "corruption_heatmap", lambda: charts.difference_heatmap(summary, Family.CORRUPTION)
        ),
    ]
    return sections + _mce_section(summary)


# ImageNet-C's 15 benchmark corruptions (imagecorruptions' "common"); the mCE averages them.
BENCHMARK_COUNT = 15
MCE_COLUMNS = ["mce", "relative_mce", "mce_corruptions", "mean_corruption_accuracy"]
MCE_COLUMNS += ["mce_validation", "relative_mce_validation"]


def _mce_section(summary: pd.DataFrame) -> list[str]:
    """The mCE table (benchmark and validation corruptions apart), and a warning when the
    sweep has only some of the 15 benchmark corruptions."""
    mce = summary[(summary["level"] == "family") & summary["mce"].notna()]
    if mce.empty:
        return []
    columns = [c for c in MCE_COLUMNS if c in mce.columns and mce[c].notna().any()]
    sections = [
        "<h3>Corruption error (ImageNet-C)</h3>",
        html_table(mce[["variant", "attribute", *columns]], ["variant", "attribute"]),
    ]
    if "mce_corruptions" in mce.columns and mce["mce_corruptions"].notna().any():
        present = int(mce["mce_corruptions"].min())
        if present < BENCHMARK_COUNT:
            sections.append(
                f'<p class="fail">This sweep has {present} of the {BENCHMARK_COUNT} ImageNet-C '
                "benchmark corruptions: its mCE is computed over those only and is not "
                "comparable with published ImageNet-C mCE.</p>"
            )
    return sections


def _adversarial_section(
    summary: pd.DataFrame, results: pd.DataFrame | None, canvas: Canvas
) -> list[str]:
    """Robust accuracy, minimal perturbations, transfer and the sanity checklist."""
    sections = [
        "<h2>Adversarial robustness</h2>",
        canvas.plot(
            "robust_accuracy",
            lambda: charts.robust_accuracy_chart(summary, variants=canvas.variants),
        ),
    ]
    if results is not None:
        sections += [
            canvas.plot(
                "median_distance",
                lambda: charts.median_distance_chart(results, canvas.variants),
            ),
            "<h3>Transfer: robust accuracy of target variants on adversarials crafted on "
            "source variants</h3>",
            canvas.plot("transfer_matrix", lambda: charts.transfer_matrix_chart(results)),
        ]
    sanity_columns = [c for c in summary.columns if c.startswith("sanity_")]
    sanity = summary[(summary["level"] == "family") & (summary["family"] == Family.ADVERSARIAL)]
    if not sanity.empty:
        sections += [
            "<h3>Sanity checklist (Carlini et al. 2019) and gradient-masking flags</h3>",
            html_table(
                sanity[["variant", "attribute", *MASKING_COLUMNS, *sanity_columns]],
                ["variant", "attribute"],
            ),
        ]
    return sections


def _summary_sections(files: RunFiles, canvas: Canvas) -> list[str]:
    """Everything read from summary.csv; nothing while the sweep has not summarised yet."""
    summary = files.summary
    if summary is None or summary.empty:
        return []
    return [
        *_verdict_section(files, summary, canvas),
        *_perturbation_section(summary, canvas),
        *_adversarial_section(summary, files.results, canvas),
    ]


def _importance_section(importance: pd.DataFrame | None, canvas: Canvas) -> list[str]:
    if importance is None:
        return []
    return [
        "<h2>Channel importance</h2>",
        canvas.plot("importance", lambda: charts.importance_heatmap(importance)),
    ]


def _failures_section(failures: pd.DataFrame | None) -> list[str]:
    if failures is None or failures.empty:
        return []
    return [
        '<h2 class="fail">Failed jobs</h2>',
        html_table(failures[["job_id", "error", "attempts"]], ["job_id", "error"]),
    ]


def _notes_section(notes: list[str]) -> list[str]:
    """The charts that could not be drawn, and why."""
    if not notes:
        return []
    return ["<h2>Notes</h2>", "<ul>", *(f"<li>{html.escape(note)}</li>" for note in notes), "</ul>"]


def html_page(title: str, sections: list[str]) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>iamt report: {html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """Write `run_dir/report.html` and `run_dir/plots/*.png`; returns the report's path."""
    files = read_run(run_dir)
    canvas = Canvas(files.run.plots, variants=run_variants(files.run.root))
    sections = [
        *_header(files),
        *_clean_section(files.clean, canvas),
        *_summary_sections(files, canvas),
        *_importance_section(files.importance, canvas),
        *_failures_section(files.failures),
        "<h2>Methods</h2>",
        _methods(files.config, files.manifest, files.results),
    ]
    sections += _notes_section(canvas.notes)  # last: the notes of every chart above
    target = files.run.report
    write_text(target, html_page(files.name, sections))
    return target
