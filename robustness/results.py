"""The run directory's result files: part files, `results.csv`, `summary.csv`, failures, timings.

- `parts/<job_id>.csv`: one per finished job, written atomically as soon as it finishes. Its
  rows carry the per-sample outcomes that the summary pairs on. A rerun skips every job whose
  part file exists (resume).
- `results.csv`: all parts merged, one row per job × variant × attribute (× ε, source), with
  accuracy and a Wilson 95% CI, sorted by a stable key so that the same config and seed give a
  byte-identical file.
- `summary.csv`: aggregates per (variant, attribute) at three levels (see `summarize`), with
  CIs, paired differences against the normal model, McNemar p-values, AUC, mCE and the
  adversarial sanity flags.
- `drift.csv`: the attention drift of every row that has a perturbed image set (noise,
  corruptions, fixed-ε white-box attacks): mask cosine and importance rank correlation between
  clean and perturbed masks (`robustness.drift`), sorted like results.csv.
- `failures.csv`: job_id, spec, error, attempts. `timings.csv`: job_id, node, worker, attempts,
  wall_s (never in results.csv, which must not depend on where a job ran).

Part files written before the drift columns existed (`LEGACY_PART_COLUMNS`) are still read and
resumed from; their rows have no drift.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from iamt.io import write_csv, write_text
from iamt.rundir import (
    DRIFT_COLUMNS,
    DRIFT_SORT_KEY,
    FAILURE_COLUMNS,
    FAILURES,
    LEGACY_PART_COLUMNS,
    PART_COLUMNS,
    PART_DTYPES,
    RESULT_COLUMNS,
    SORT_KEY,
    SUMMARY_COLUMNS,
    TIMING_COLUMNS,
    TIMINGS,
    RunDirectory,
)
from iamt.vocabulary import NORMAL, VERDICT_FAMILIES, Family, Norm, StrengthAxis
from robustness.jobs import Job
from robustness.metrics import (
    CorruptionErrorSummary,
    area_under_curve,
    corruption_errors,
    holm,
    paired_difference,
    wilson_interval,
)
from robustness.perturbations import get_perturbation_class
from robustness.perturbations.base import MinimisationAttack
from robustness.perturbations.corruptions import BENCHMARK_CORRUPTIONS, VALIDATION_CORRUPTIONS
from robustness.sanity import CHECKS, FGSM, MASKING, all_passed, masking_flags, sanity_flags

# --------------------------------------------------------------------------- part files


def _cell(value: Any) -> str:
    """A part file's cell as `write_csv` would print it: floats as %.6g, missing as empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_part(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One job's rows, atomically. Written with the csv module rather than pandas: the driver
    writes one part per finished job, and pandas cost 4 ms of the driver's time per part."""
    if not rows:
        raise ValueError("a job produced no rows")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PART_COLUMNS)
    writer.writerows([_cell(row.get(column)) for column in PART_COLUMNS] for row in rows)
    write_text(RunDirectory(run_dir).part(str(rows[0]["job_id"])), buffer.getvalue())


def finished_job_ids(run_dir: Path) -> set[str]:
    folder = RunDirectory(run_dir).parts
    return {path.stem for path in folder.glob("*.csv")} if folder.is_dir() else set()


def part_problem(path: Path, variants: Collection[str], attributes: Collection[str]) -> str | None:
    """Why the part file at `path` cannot be trusted as its job's result, or None if it can.

    Parts are written atomically, so a bad one was damaged afterwards (a full disk, a copy cut
    short, a hand edit). Checked: it parses, has the part columns, belongs to its job, covers
    every variant and attribute, and each row's outcomes agree with its `n` and `correct`."""
    text = path.read_bytes()
    if not text.endswith(b"\n"):
        return "truncated: it does not end with a newline"
    try:
        frame = pd.read_csv(path, dtype=PART_DTYPES)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        return f"unreadable CSV: {str(error).strip().splitlines()[0]}"
    if list(frame.columns) not in (PART_COLUMNS, LEGACY_PART_COLUMNS):
        return f"columns {list(frame.columns)} are not the part columns"
    if frame.empty:
        return "no rows"
    if set(frame["job_id"].astype(str)) != {path.stem}:
        return f"rows of job(s) {sorted(set(frame['job_id'].astype(str)))[:3]}, not {path.stem}"
    if set(frame["variant"]) != set(variants) or set(frame["attribute"]) != set(attributes):
        return "rows missing for some variant or attribute"
    for row in frame.itertuples():
        outcomes = row.outcomes if isinstance(row.outcomes, str) else ""
        if (
            len(outcomes) != row.n
            or set(outcomes) - {"0", "1"}
            or outcomes.count("1") != row.correct
        ):
            return f"row {row.Index + 1}: outcomes disagree with n={row.n}, correct={row.correct}"
    return None


def quarantine_corrupt_parts(
    run_dir: Path, job_variants: Mapping[str, Collection[str]], attributes: Collection[str]
) -> list[dict[str, str]]:
    """Move every untrustworthy part file into `run_dir/quarantine/` (kept for inspection, never
    deleted), so that its job counts as not done and runs again. Returns what was moved.
    `job_variants`: {job_id: the variants its part must cover}; a part of a job not in it (a
    stale one) must cover them all."""
    moved = []
    folder = RunDirectory(run_dir).parts
    every = sorted({variant for variants in job_variants.values() for variant in variants})
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        expected = job_variants.get(path.stem, every)
        problem = part_problem(path, expected, attributes)
        if problem is None:
            continue
        target = RunDirectory(run_dir).quarantine / path.name
        for copy in itertools.count(1):
            if not target.exists():
                break
            target = target.with_name(f"{path.stem}.{copy}.csv")
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
        moved.append({"job_id": path.stem, "problem": problem, "moved_to": str(target)})
    return moved


def read_parts(run_dir: Path, job_ids: Iterable[str]) -> pd.DataFrame:
    """The rows of the given jobs' parts, in job_id order, parsed as one CSV per header (one
    pandas parse instead of one per part, which cost 3 ms a part). Legacy parts (no drift
    columns) get empty drift cells."""
    headers = [",".join(PART_COLUMNS), ",".join(LEGACY_PART_COLUMNS)]
    bodies: dict[str, list[str]] = {header: [] for header in headers}
    for job_id in sorted(job_ids):
        path = RunDirectory(run_dir).part(job_id)
        first, _, body = path.read_text().partition("\n")
        if first not in bodies:
            raise ValueError(f"{path}: not a part file (header {first[:80]!r})")
        bodies[first].append(body)
    if not any(bodies.values()):
        return pd.DataFrame(columns=PART_COLUMNS)
    if not bodies[headers[1]]:  # the usual case: every part has the current columns
        text = headers[0] + "\n" + "".join(bodies[headers[0]])
        return pd.read_csv(io.StringIO(text), dtype=PART_DTYPES)
    frames = [
        pd.read_csv(
            io.StringIO(header + "\n" + "".join(bodies[header])),
            dtype=PART_DTYPES,
        )
        for header in headers
        if bodies[header]
    ]
    # Back to job_id order (a stable sort keeps each part's own row order).
    frame = pd.concat(frames, ignore_index=True).sort_values("job_id", kind="mergesort")
    return frame.reindex(columns=PART_COLUMNS).reset_index(drop=True)


# --------------------------------------------------------------------------- results.csv


def merge_results(
    parts: pd.DataFrame, *, run: str, dataset: str, transforms: Mapping[str, str]
) -> pd.DataFrame:
    """One row per part row, with accuracy and its Wilson CI; a stable, total order."""
    frame = parts.copy()
    frame["run"] = run
    frame["dataset"] = dataset
    frame["transform"] = frame["variant"].map(transforms)
    frame["accuracy"] = frame["correct"] / frame["n"]
    intervals = [
        wilson_interval(int(c), int(n)) for c, n in zip(frame["correct"], frame["n"], strict=True)
    ]
    frame["ci_low"] = [low for low, _ in intervals]
    frame["ci_high"] = [high for _, high in intervals]
    frame = _sorted(frame)
    return frame[RESULT_COLUMNS]


def drift_table(parts: pd.DataFrame) -> pd.DataFrame:
    """`drift.csv`: the attention drift of each part row that has one (noise, corruption and
    fixed-ε white-box rows; clean, transfer and minimisation rows have none), one row per job ×
    variant × attribute, with the strength in one column (severity for corruptions, else ε).
    Sorted by a total key, so the same parts give the same bytes."""
    has_drift = parts["mask_cosine"].notna() | parts["importance_rank_correlation"].notna()
    frame = parts[has_drift & parts["source_variant"].isna()]
    severity = frame["family"].map(StrengthAxis.of_family) == StrengthAxis.SEVERITY
    frame = frame.assign(
        strength=frame[StrengthAxis.SEVERITY.column].where(
            severity, frame[StrengthAxis.EPSILON.column]
        ),
        n=frame["drift_n"],  # the images the drift was measured on, not the whole shard
    )
    frame = frame.sort_values(DRIFT_SORT_KEY, na_position="first", kind="mergesort")
    return frame[DRIFT_COLUMNS].reset_index(drop=True)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    # NaN sorts last; the key is total (job_id breaks every remaining tie).
    return frame.sort_values(SORT_KEY, na_position="first", kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------- summary.csv


def _outcomes(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated per-sample correctness (bool) and sample ids of the rows in `frame`."""
    correct, ids = [], []
    for text, start in zip(frame["outcomes"], frame["shard_start"], strict=True):
        bits = np.frombuffer(str(text).encode(), dtype=np.uint8) == ord("1")
        correct.append(bits)
        ids.append(np.arange(int(start), int(start) + len(bits)))
    if not correct:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    return np.concatenate(correct), np.concatenate(ids)


def _key(frame: pd.DataFrame) -> pd.Series:
    """A per-row identity of (condition, sample shard) that is the same for every variant."""
    columns = ["perturbation", "severity", "epsilon", "source_variant", "shard_start"]
    keys = [
        "|".join(str(value) for value in values)
        for values in zip(*(frame[c] for c in columns), strict=True)
    ]
    return pd.Series(keys, index=frame.index)


def paired_outcomes(
    group: pd.DataFrame, normal: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(normal's correctness, the group's correctness, sample ids), one entry per (condition,
    sample) that both the group (one variant's rows) and `normal` hold; None when none."""
    mine, theirs = group.assign(_k=_key(group)), normal.assign(_k=_key(normal))
    common = sorted(set(mine["_k"]) & set(theirs["_k"]))
    if not common:
        return None
    a, sample_ids = _outcomes(theirs.set_index("_k").loc[common].reset_index())
    b, _ = _outcomes(mine.set_index("_k").loc[common].reset_index())
    return a, b, sample_ids


def _paired(
    group: pd.DataFrame, normal: pd.DataFrame, *, clusters: bool, seed: int
) -> dict[str, float]:
    """Paired comparison of `group` (one variant) against the normal rows of the same
    conditions and shards. Pairs only what both have."""
    paired = paired_outcomes(group, normal)
    if paired is None:
        return {}
    a, b, sample_ids = paired
    result = paired_difference(a, b, seed=seed, clusters=sample_ids if clusters else None)
    return {
        "difference": result.difference,
        "diff_ci_low": result.ci_low,
        "diff_ci_high": result.ci_high,
        "mcnemar_p": result.mcnemar_p,
    }


def _paired_transfer(
    group: pd.DataFrame, normal: pd.DataFrame, *, clusters: bool, seed: int
) -> dict[str, float]:
    """A variant's transfer rows whose adversarials were crafted on the normal model, paired
    with the normal model's white-box rows on the same adversarial images: does emphasis
    resist attacks made for the normal model? (Other sources are not paired.)"""
    from_normal = group[group["source_variant"] == NORMAL].assign(source_variant=np.nan)
    whitebox = normal[normal["family"] == Family.ADVERSARIAL.value]
    return _paired(from_normal, whitebox, clusters=clusters, seed=seed)


def _accuracy(group: pd.DataFrame) -> dict[str, float]:
    correct, n = int(group["correct"].sum()), int(group["n"].sum())
    low, high = wilson_interval(correct, n)
    return {"n": n, "accuracy": correct / n, "ci_low": low, "ci_high": high}


def _success_rate(group: pd.DataFrame, clean: pd.DataFrame) -> float:
    """Pooled success among clean-correct samples: robust ⊆ clean-correct, so success =
    1 − robust / clean-correct, counted on the samples the group covers."""
    robust, ids = _outcomes(group)
    clean_correct, clean_ids = _outcomes(clean)
    lookup = dict(zip(clean_ids.tolist(), clean_correct.tolist(), strict=True))
    initially = sum(lookup.get(int(i), False) for i in ids)
    return float("nan") if initially == 0 else 1.0 - float(robust.sum()) / initially


def summarize(
    parts: pd.DataFrame,
    *,
    transforms: Mapping[str, str],
    seed: int = 0,
    gradients: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Aggregate the part rows into `summary.csv`, one row per (level, variant, attribute, …):

    - `condition`: one perturbation at one strength (pooled over shards), paired against the
      normal model on the same samples (pair bootstrap);
    - `perturbation`: one perturbation pooled over its strengths, with the AUC of accuracy
      against strength (noise, from strength 0 = clean);
    - `family`: everything of one family pooled, the headline comparison; the bootstrap
      resamples *images* (clusters), since each image appears under many perturbations.
      Corruption rows add mCE and relative mCE (baseline: the normal model), adversarial rows
      the sanity checklist and the gradient-masking flags of the variant and attribute
      (`gradients`: robustness/gradients.py's statistics, when the sweep measured them).
    """
    rows: list[dict[str, Any]] = []
    normal_rows = parts[parts["variant"] == NORMAL]
    clean_parts = parts[parts["family"] == Family.CLEAN.value]
    for (variant, attribute), group in parts.groupby(["variant", "attribute"], sort=True):
        normal = normal_rows[normal_rows["attribute"] == attribute]
        clean = clean_parts[
            (clean_parts["variant"] == variant) & (clean_parts["attribute"] == attribute)
        ]
        base = {
            "variant": variant,
            "transform": transforms.get(str(variant)),
            "attribute": attribute,
        }
        sanity = _sanity(group, clean)
        if sanity:
            sanity = _with_masking(sanity, group, normal, _gradient_rows(gradients, attribute))
        for family, family_rows in group.groupby("family", sort=True):
            rows += _family_summary(
                Family(family), family_rows, base, normal, normal_rows, clean, sanity, seed
            )
    frame = pd.DataFrame(rows)
    for column in SUMMARY_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    frame["p_holm"] = _holm_by_variant(frame)
    level_order = {"family": 0, "perturbation": 1, "condition": 2}
    frame = frame.assign(_level=frame["level"].map(level_order)).sort_values(
        ["_level", "family", "attribute", "variant", "perturbation", "severity", "epsilon"],
        na_position="first",
        kind="mergesort",
    )
    return frame[SUMMARY_COLUMNS].reset_index(drop=True)


def _family_summary(
    family: Family,
    family_rows: pd.DataFrame,
    base: Mapping[str, Any],
    normal: pd.DataFrame,
    normal_rows: pd.DataFrame,
    clean: pd.DataFrame,
    sanity: Mapping[str, Any],
    seed: int,
) -> list[dict[str, Any]]:
    """The summary rows of one family of one (variant, attribute): every condition, every
    perturbation (noise and corruptions, pooled over strengths), then the family itself."""
    rows: list[dict[str, Any]] = []
    variant = base["variant"]
    compare = variant != NORMAL and family is not Family.TRANSFER
    # Transfer: this variant on the adversarials crafted against the normal model, paired
    # with the normal model on those very images (its white-box rows).
    transfer = variant != NORMAL and family is Family.TRANSFER
    keys = ["perturbation", "severity", "epsilon", "source_variant"]
    for condition, rows_here in family_rows.groupby(keys, dropna=False, sort=True):
        row = {**base, "level": "condition", "family": family.value}
        row.update(dict(zip(keys, condition, strict=True)))
        row.update(_accuracy(rows_here))
        if family in (Family.ADVERSARIAL, Family.TRANSFER):
            row["success_rate"] = _success_rate(rows_here, clean)
            row["median_distance"] = _pooled_median(rows_here)
        if compare:
            row.update(_paired(rows_here, normal, clusters=False, seed=seed))
        if transfer:
            row.update(_paired_transfer(rows_here, normal, clusters=False, seed=seed))
        rows.append(row)
    if family in (Family.NOISE, Family.CORRUPTION):
        for perturbation, rows_here in family_rows.groupby("perturbation", sort=True):
            row = {**base, "level": "perturbation", "family": family.value}
            row["perturbation"] = perturbation
            row.update(_accuracy(rows_here))
            if family is Family.NOISE:
                row["auc"] = _auc(rows_here, clean)
            if compare:
                row.update(_paired(rows_here, normal, clusters=True, seed=seed))
            rows.append(row)
    row = {**base, "level": "family", "family": family.value}  # the headline
    row.update(_accuracy(family_rows))
    if compare:
        row.update(_paired(family_rows, normal, clusters=True, seed=seed))
    if transfer:
        row.update(_paired_transfer(family_rows, normal, clusters=True, seed=seed))
    if family is Family.CORRUPTION:
        row.update(_mce(family_rows, clean, normal, normal_rows))
    if family is Family.ADVERSARIAL:
        row.update(sanity)
    rows.append(row)
    return rows


def _pooled_median(group: pd.DataFrame) -> float:
    """Median minimal distance. Exact for one shard; with several, the n-weighted mean of the
    shard medians (the part files keep medians, not every distance)."""
    values = group.dropna(subset=["median_distance"])
    if values.empty:
        return float("nan")
    if len(values["shard_start"].unique()) == 1:
        return float(values["median_distance"].iloc[0])
    weights = values["n"] / values["n"].sum()
    return float((values["median_distance"] * weights).sum())


def _auc(group: pd.DataFrame, clean: pd.DataFrame) -> float:
    """Area under accuracy vs strength, from strength 0 (the clean accuracy on these samples)."""
    curve = group.groupby("epsilon")[["correct", "n"]].sum()
    strengths = [0.0, *curve.index.astype(float).tolist()]
    _, ids = _outcomes(group)
    clean_correct, clean_ids = _outcomes(clean)
    covered = np.isin(clean_ids, np.unique(ids))
    clean_accuracy = float(clean_correct[covered].mean()) if covered.any() else float("nan")
    accuracies = [clean_accuracy, *(curve["correct"] / curve["n"]).tolist()]
    return area_under_curve(strengths, accuracies)


def _mce(
    mine: pd.DataFrame, clean: pd.DataFrame, normal: pd.DataFrame, normal_all: pd.DataFrame
) -> dict[str, float]:
    """ImageNet-C's mCE and relative mCE of this variant over the 15 benchmark corruptions
    present (the normal model is the baseline), the same over the 4 validation corruptions,
    apart, and RobustBench's mean corruption accuracy (mean over benchmark corruption ×
    severity conditions)."""
    baseline = normal[normal["family"] == Family.CORRUPTION.value]
    attribute = mine["attribute"].iloc[0]
    normal_clean = normal_all[
        (normal_all["family"] == Family.CLEAN.value) & (normal_all["attribute"] == attribute)
    ]
    if baseline.empty or clean.empty or normal_clean.empty:
        return {}
    errors, base_errors = _error_table(mine), _error_table(baseline)
    benchmark = [c for c in BENCHMARK_CORRUPTIONS if c in errors and c in base_errors]
    validation = [c for c in VALIDATION_CORRUPTIONS if c in errors and c in base_errors]

    def over(names: list[str]) -> CorruptionErrorSummary:
        only = {c: errors[c] for c in names}
        return corruption_errors(only, {c: base_errors[c] for c in names}, *clean_errors)

    clean_errors = (_error(clean), _error(normal_clean))
    row: dict[str, float] = {"mce_corruptions": len(benchmark)}
    if benchmark:
        ce = over(benchmark)
        accuracies = [1 - e for c in benchmark for e in errors[c]]
        row.update(mce=ce.mce, relative_mce=ce.relative_mce)
        row["mean_corruption_accuracy"] = float(np.mean(accuracies))
    if validation:
        ce = over(validation)
        row.update(mce_validation=ce.mce, relative_mce_validation=ce.relative_mce)
    return row


def _error_table(frame: pd.DataFrame) -> dict[str, list[float]]:
    """Top-1 error per corruption, one entry per severity in ascending order."""
    errors = frame.groupby(["perturbation", "severity"])[["correct", "n"]].sum()
    errors = 1 - errors["correct"] / errors["n"]
    return {str(p): errors.loc[p].sort_index().tolist() for p in errors.index.levels[0]}


def _error(frame: pd.DataFrame) -> float:
    return 1 - float(frame["correct"].sum()) / float(frame["n"].sum())


def _holm_by_variant(frame: pd.DataFrame) -> pd.Series:
    """`p_holm`: the family-level McNemar p-values of each variant, Holm-adjusted over all
    of that variant's family-level tests in the verdict's families (every family ×
    attribute): the tests its verdict reads. Other rows (and clean) have none."""
    adjusted = pd.Series(np.nan, index=frame.index)
    tested = (frame["level"] == "family") & frame["mcnemar_p"].notna()
    tested &= frame["family"].isin([family.value for family in VERDICT_FAMILIES])
    for _, group in frame[tested].groupby("variant"):
        adjusted[group.index] = holm(group["mcnemar_p"].to_numpy())
    return adjusted


def _curve(frame: pd.DataFrame, value: str) -> dict[float, float]:
    grouped = frame.groupby("epsilon")[["correct", "n"]].sum()
    if value == "accuracy":
        return {float(e): float(r.correct / r.n) for e, r in grouped.iterrows()}
    return {float(e): float(v) for e, v in frame.groupby("epsilon")["success_rate"].mean().items()}


def _sanity(group: pd.DataFrame, clean: pd.DataFrame) -> dict[str, Any]:
    """The Carlini et al. checklist for one (variant, attribute), computed per norm (L∞, L2)
    and combined: a check fails if it fails for any norm, passes if it passes for one."""
    adversarial = group[group["family"] == Family.ADVERSARIAL.value]
    transfer = group[group["family"] == Family.TRANSFER.value]
    if adversarial.empty:
        return {}
    per_norm: list[dict[str, bool | None]] = []
    for norm in Norm:
        accuracy, success, decision = {}, {}, None
        for name, rows in adversarial.groupby("perturbation"):
            cls = get_perturbation_class(str(name))
            if getattr(cls, "norm", None) != norm:
                continue
            if name == "boundary":
                decision = _curve(rows, "success")
                continue
            accuracy[str(name)] = _curve(rows, "accuracy")
            success[str(name)] = _curve(rows, "success")
        norm_transfer = transfer[
            transfer["perturbation"].map(lambda p: getattr(get_perturbation_class(p), "norm", ""))
            == norm
        ]
        transfer_success = None
        if not norm_transfer.empty:
            transfer_success = {
                float(e): float(v)
                for e, v in norm_transfer.groupby("epsilon")["success_rate"].max().items()
            }
        if accuracy:
            per_norm.append(
                sanity_flags(
                    accuracy,
                    success,
                    transfer_success=transfer_success,
                    decision_based_success=decision,
                )
            )
    combined: dict[str, bool | None] = {}
    for check in CHECKS:
        values = [flags[check] for flags in per_norm]
        if any(v is False for v in values):
            combined[check] = False
        elif any(v is True for v in values):
            combined[check] = True
        else:
            combined[check] = None
    result: dict[str, Any] = {f"sanity_{k}": v for k, v in combined.items()}
    result["sanity_all"] = all_passed(combined)
    return result


def _gradient_rows(gradients: pd.DataFrame | None, attribute: str) -> pd.DataFrame:
    """One attribute's gradient statistics, indexed by variant (empty when not measured)."""
    if gradients is None or gradients.empty:
        return pd.DataFrame(columns=["logit_scale"])
    return gradients[gradients["attribute"] == attribute].set_index("variant")


def _minimisation_distance_ratio(group: pd.DataFrame, normal: pd.DataFrame) -> float:
    """The largest ratio, over minimisation attacks, of the variant's median minimal distance
    to the normal model's: the attack that says most strongly "more robust"."""
    ratios = []
    for name, rows in group[group["family"] == Family.ADVERSARIAL.value].groupby("perturbation"):
        if not issubclass(get_perturbation_class(str(name)), MinimisationAttack):
            continue
        baseline = _pooled_median(normal[normal["perturbation"] == name])
        if baseline > 0:
            ratios.append(_pooled_median(rows) / baseline)
    return max(ratios, default=float("nan"))


def _fgsm_difference(group: pd.DataFrame, normal: pd.DataFrame) -> float:
    """FGSM robust accuracy, variant − normal, pooled over its ε values."""
    mine, theirs = group[group["perturbation"] == FGSM], normal[normal["perturbation"] == FGSM]
    if mine.empty or theirs.empty:
        return float("nan")
    accuracy = [rows["correct"].sum() / rows["n"].sum() for rows in (mine, theirs)]
    return float(accuracy[0] - accuracy[1])


def _with_masking(
    sanity: dict[str, Any], group: pd.DataFrame, normal: pd.DataFrame, gradients: pd.DataFrame
) -> dict[str, Any]:
    """Add the gradient-masking statistics and flags of one (variant, attribute) to its sanity
    checklist; `sanity_all` then reads both."""
    variant = str(group["variant"].iloc[0])
    stats = {"gradient_zero_fraction": np.nan, "gradient_nonfinite_fraction": np.nan}
    ratio = np.nan
    if variant in gradients.index:
        stats = {k: float(gradients.at[variant, k]) for k in stats}
        if NORMAL in gradients.index and gradients.at[NORMAL, "logit_scale"] > 0:
            scale = gradients.at[variant, "logit_scale"] / gradients.at[NORMAL, "logit_scale"]
            ratio = float(scale)
    compare = variant != NORMAL
    flags = masking_flags(
        **stats,
        logit_scale_ratio=ratio,
        distance_ratio=_minimisation_distance_ratio(group, normal) if compare else None,
        fgsm_difference=_fgsm_difference(group, normal) if compare else None,
    )
    checks = {check: sanity[f"sanity_{check}"] for check in CHECKS}
    checks.update(flags)
    result: dict[str, Any] = {**stats, "logit_scale_ratio": ratio}
    result.update({f"sanity_{check}": checks[check] for check in (*CHECKS, *MASKING)})
    result["sanity_all"] = all_passed(checks)
    return result


# --------------------------------------------------------------------------- failures, timings


def write_failures(run_dir: Path, failures: Sequence[Mapping[str, Any]]) -> None:
    frame = pd.DataFrame(list(failures), columns=FAILURE_COLUMNS).sort_values(
        "job_id", kind="mergesort"
    )
    write_csv(RunDirectory(run_dir) / FAILURES, frame)


def failure_record(job: Job, error: BaseException, attempts: int) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "spec": json.dumps(job.spec(), sort_keys=True),
        "error": f"{type(error).__name__}: {error}",
        "attempts": attempts,
    }


def write_timings(run_dir: Path, timings: Sequence[Mapping[str, Any]]) -> None:
    """Merge with earlier timings (a resumed run keeps the first run's records)."""
    path = RunDirectory(run_dir) / TIMINGS
    frame = pd.DataFrame(list(timings), columns=TIMING_COLUMNS)
    if path.is_file():
        earlier = pd.read_csv(path, dtype={"job_id": str})
        frame = pd.concat([earlier[~earlier["job_id"].isin(frame["job_id"])], frame])
    write_csv(path, frame.sort_values("job_id", kind="mergesort"))
