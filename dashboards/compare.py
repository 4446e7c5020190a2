"""Compare two runs (or two study members): accuracy of run B − run A per variant, family and
attribute. Pure and torch-free: paths and DataFrames in, DataFrames out.

- **Paired**, when both runs were evaluated on the same test set (`test_set_fingerprint`): the
  per-image outcomes of the part files (`parts/<job_id>.csv`, column `outcomes`, one '0'/'1' per
  image) are matched row by row on (variant, attribute, family, perturbation, severity, ε,
  source variant, shard start), so each pair is one image seen by both runs under the same
  condition. The difference gets a percentile cluster-bootstrap 95% CI that resamples images
  (one image appears under every condition of a family) and McNemar's exact p, as summary.csv
  does within one run. Job ids are not the key: they hash the run's seed and variant list, so
  two runs with another variant set (a `searched` one) never share one.
- **Unpaired** otherwise: pooled accuracies from results.csv, the difference with Newcombe's
  hybrid score interval (his method 10, from the two Wilson intervals), which assumes two
  independent samples; pooled over a family's conditions the samples repeat images, so read it
  as approximate.

The statistics are written out here because the dashboards may not import `robustness` (whose
metrics module computes the same within a run).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtri
from scipy.stats import binomtest

from iamt.rundir import CONFIG, PARTS, RESULTS, RunDataError, RunDirectory, read_csv

PAIRED = "paired"
UNPAIRED = "unpaired"
GROUP = ["variant", "family", "attribute"]
# What makes two part rows the same images under the same condition in two runs.
PAIR_KEY = [*GROUP, "perturbation", "severity", "epsilon", "source_variant", "shard_start"]
# The data settings that decide which images the test split holds (and the run seed, which
# draws the built-in datasets and the seeded splits). n_train and n_val size the other splits
# only: the test split is drawn apart (iamt.data.split_seed, the seeded real-data splits).
TEST_SET_FIELDS: tuple[str, ...] = ("name", "root", "image_size", "attributes", "n_test")
TEST_SET_FIELDS += ("val_fraction", "test_fraction")
COLUMNS = [*GROUP, "method", "n", "accuracy_a", "accuracy_b", "difference"]
COLUMNS += ["ci_low", "ci_high", "mcnemar_p"]
CONFIDENCE = 0.95
RESAMPLES = 2000


def test_set_fingerprint(run_dir: Path) -> str | None:
    """A short hash of what decides a run's test images: config.yaml's data settings
    (`TEST_SET_FIELDS`), the run seed and the evaluated split. manifest.json records only the
    dataset's name and the seed, and no run file hashes the test images, so this is the most
    reliable record there is. None when the run has no config yet."""
    config = RunDirectory(run_dir).read_config()
    if config is None:
        return None
    data = config.get("data") or {}
    robustness = config.get("robustness") or {}
    if not isinstance(data, dict) or not isinstance(robustness, dict):
        raise RunDataError(f"{CONFIG} is malformed: 'data' and 'robustness' must be mappings")
    recorded = {
        "data": {field: data.get(field) for field in TEST_SET_FIELDS},
        "seed": config.get("seed"),
        "split": robustness.get("split", "test"),
    }
    canonical = json.dumps(recorded, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def read_outcomes(run_dir: Path) -> pd.DataFrame | None:
    """Every row of the run's part files, with its per-image `outcomes`; None without parts."""
    parts = RunDirectory(run_dir).parts
    files = sorted(parts.glob("*.csv")) if parts.is_dir() else []
    if not files:
        return None
    frame = pd.concat([read_csv(path) for path in files], ignore_index=True)
    missing = [c for c in [*PAIR_KEY, "n", "outcomes"] if c not in frame.columns]
    if missing:
        raise RunDataError(f"{PARTS}/ files lack the column(s) {', '.join(missing)}")
    return frame


def _keyed(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with text keys, numbers normalised (a strength read as "0.2" or 0.2 is one key),
    without the keys that name two rows (one attack twice with other parameters, say): which
    row pairs with which would be a guess."""
    frame = rows.copy()
    for column in ("severity", "epsilon", "shard_start", "n"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in PAIR_KEY:
        frame[column] = frame[column].map(lambda v: "" if pd.isna(v) else str(v))
    return frame[~frame.duplicated(PAIR_KEY, keep=False)]


def _bits(outcomes: pd.Series) -> np.ndarray:
    return np.concatenate([np.frombuffer(str(t).encode(), np.uint8) == ord("1") for t in outcomes])


def _image_ids(pairs: pd.DataFrame) -> np.ndarray:
    """The test-split index of every image of `pairs`, in the order `_bits` reads them."""
    starts = pairs["shard_start"].astype(float).astype(int)
    return np.concatenate(
        [np.arange(s, s + len(str(t))) for s, t in zip(starts, pairs["outcomes_a"], strict=True)]
    )


def _cluster_interval(
    a: np.ndarray, b: np.ndarray, clusters: np.ndarray, seed: int, resamples: int
) -> tuple[float, float]:
    """Percentile bootstrap of mean(b) − mean(a), resampling whole clusters (images)."""
    _, cluster = np.unique(clusters, return_inverse=True)
    count = np.bincount(cluster).astype(float)
    total = np.bincount(cluster, weights=b.astype(float) - a.astype(float))
    draws = np.random.default_rng(seed).multinomial(
        len(count), np.full(len(count), 1 / len(count)), size=resamples
    )
    replicates = (draws @ total) / (draws @ count)
    alpha = 1 - CONFIDENCE
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mcnemar_p(a_only: int, b_only: int) -> float:
    """McNemar's exact two-sided p: the discordant pairs against Binomial(k, 1/2)."""
    k = a_only + b_only
    return 1.0 if k == 0 else float(binomtest(b_only, k, 0.5).pvalue)


def paired_differences(
    runs_a: pd.DataFrame, runs_b: pd.DataFrame, *, seed: int = 0, resamples: int = RESAMPLES
) -> pd.DataFrame:
    """Run B − run A per (variant, family, attribute) on the same images: `runs_a`, `runs_b`
    are part-file rows (`read_outcomes`). Rows pair on `PAIR_KEY` and equal `n`; conditions
    only one run has are left out. `n` counts the pairs (image × condition)."""
    merged = _keyed(runs_a).merge(_keyed(runs_b), on=PAIR_KEY, suffixes=("_a", "_b"))
    lengths_a = merged["outcomes_a"].astype(str).str.len()
    merged = merged[(merged["n_a"] == merged["n_b"]) & (lengths_a == merged["n_a"])]
    rows = []
    for (variant, family, attribute), pairs in merged.groupby(GROUP, sort=True):
        a, b = _bits(pairs["outcomes_a"]), _bits(pairs["outcomes_b"])
        low, high = _cluster_interval(a, b, _image_ids(pairs), seed, resamples)
        a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
        rows.append(
            {
                "variant": variant,
                "family": family,
                "attribute": attribute,
                "method": PAIRED,
                "n": len(a),
                "accuracy_a": float(a.mean()),
                "accuracy_b": float(b.mean()),
                "difference": float(b.mean() - a.mean()),
                "ci_low": low,
                "ci_high": high,
                "mcnemar_p": mcnemar_p(a_only, b_only),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """The Wilson score 95% interval of correct / n (Wilson 1927)."""
    z = float(ndtri(0.5 + CONFIDENCE / 2))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(correct_a: int, n_a: int, correct_b: int, n_b: int) -> tuple[float, float]:
    """95% interval of p_b − p_a for two independent samples: Newcombe's (1998) hybrid score
    interval, method 10, built from each proportion's Wilson interval."""
    p_a, p_b = correct_a / n_a, correct_b / n_b
    (low_a, high_a), (low_b, high_b) = (
        wilson_interval(correct_a, n_a),
        wilson_interval(correct_b, n_b),
    )
    difference = p_b - p_a
    low = difference - math.sqrt((p_b - low_b) ** 2 + (high_a - p_a) ** 2)
    high = difference + math.sqrt((high_b - p_b) ** 2 + (p_a - low_a) ** 2)
    return low, high


def unpaired_differences(results_a: pd.DataFrame, results_b: pd.DataFrame) -> pd.DataFrame:
    """Run B − run A per (variant, family, attribute) from results.csv's counts: the pooled
    accuracies (Σ correct ÷ Σ n over the group's rows) and Newcombe's interval."""
    pooled_a = results_a.groupby(GROUP)[["n", "correct"]].sum()
    pooled_b = results_b.groupby(GROUP)[["n", "correct"]].sum()
    both = pooled_a.join(pooled_b, how="inner", lsuffix="_a", rsuffix="_b")
    both = both[(both["n_a"] > 0) & (both["n_b"] > 0)]
    rows = []
    for (variant, family, attribute), row in both.sort_index().iterrows():
        counts = int(row["correct_a"]), int(row["n_a"]), int(row["correct_b"]), int(row["n_b"])
        low, high = newcombe_interval(*counts)
        accuracy_a, accuracy_b = counts[0] / counts[1], counts[2] / counts[3]
        rows.append(
            {
                "variant": variant,
                "family": family,
                "attribute": attribute,
                "method": UNPAIRED,
                "n": counts[1] + counts[3],
                "accuracy_a": accuracy_a,
                "accuracy_b": accuracy_b,
                "difference": accuracy_b - accuracy_a,
                "ci_low": low,
                "ci_high": high,
                "mcnemar_p": np.nan,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclass(frozen=True)
class Comparison:
    """Run B − run A: which method, why, and the table (`COLUMNS`; empty when nothing is
    shared or a run has no results yet)."""

    method: str
    reason: str
    table: pd.DataFrame


def compare_runs(run_a: Path, run_b: Path, *, seed: int = 0) -> Comparison:
    """Paired differences when both runs share the test set and have part files; unpaired
    differences of results.csv's accuracies otherwise. RunDataError for a malformed file."""
    fingerprint_a, fingerprint_b = test_set_fingerprint(run_a), test_set_fingerprint(run_b)
    same = fingerprint_a is not None and fingerprint_a == fingerprint_b
    if same:
        outcomes_a, outcomes_b = read_outcomes(run_a), read_outcomes(run_b)
        if outcomes_a is not None and outcomes_b is not None:
            reason = (
                f"both runs evaluated the same test set (fingerprint {fingerprint_a}: "
                f"{CONFIG}'s data settings, seed and split): paired per image"
            )
            return Comparison(PAIRED, reason, paired_differences(outcomes_a, outcomes_b, seed=seed))
        why = f"same test set (fingerprint {fingerprint_a}), but a run has no {PARTS}/ outcomes"
    else:
        why = (
            f"different test sets (fingerprints {fingerprint_a} and {fingerprint_b}: "
            f"{CONFIG}'s data settings, seed and split)"
        )
    results_a = RunDirectory(run_a).read_csv(RESULTS)
    results_b = RunDirectory(run_b).read_csv(RESULTS)
    if results_a is None or results_b is None:
        return Comparison(
            UNPAIRED, f"{why}; a run has no {RESULTS} yet", pd.DataFrame(columns=COLUMNS)
        )
    return Comparison(
        UNPAIRED, f"{why}: unpaired accuracies", unpaired_differences(results_a, results_b)
    )
