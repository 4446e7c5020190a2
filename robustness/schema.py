"""Column vocabulary of the run directory's CSV files.

Pure constants, importing nothing heavy: `robustness.results` writes these files and the
dashboard (which must not import torch) reads them, so both take the columns from here.
"""

from __future__ import annotations

from robustness.sanity import CHECKS

RESULT_COLUMNS = [
    "run",
    "dataset",
    "job_id",
    "variant",
    "transform",
    "attribute",
    "family",
    "perturbation",
    "severity",
    "epsilon",
    "source_variant",
    "n",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "success_rate",
    "median_distance",
    "seed",
    "engine",  # corruptions: reference (imagecorruptions) or native (torch); empty otherwise
]
PART_COLUMNS = [
    "job_id",
    "variant",
    "attribute",
    "family",
    "perturbation",
    "severity",
    "epsilon",
    "source_variant",
    "n",
    "correct",
    "success_rate",
    "median_distance",
    "seed",
    "shard_start",
    "engine",
    "mask_cosine",  # attention drift of the row's variant and attribute (robustness.drift)
    "importance_rank_correlation",
    "drift_n",  # images the drift was measured on (`robustness.drift_samples` of the shard)
    "outcomes",
]
# Part files written before the drift columns existed: still read (their drift is empty).
LEGACY_PART_COLUMNS = [
    c for c in PART_COLUMNS if c not in ("mask_cosine", "importance_rank_correlation", "drift_n")
]
SORT_KEY = ["family", "perturbation", "severity", "epsilon", "attribute", "variant"]
SORT_KEY += ["source_variant", "shard_start", "job_id"]
CLEAN_COLUMNS = ["run", "dataset", "variant", "transform", "attribute", "n", "correct"]
CLEAN_COLUMNS += ["accuracy", "ci_low", "ci_high"]
IMPORTANCE_COLUMNS = ["attribute", "channel", "score", "rank"]
FAILURE_COLUMNS = ["job_id", "spec", "error", "attempts"]
TIMING_COLUMNS = ["job_id", "node", "worker", "attempts", "wall_s"]
# drift.csv: one row per job × variant × attribute that has a perturbed image set (noise,
# corruption, fixed-ε white-box); `strength` is the severity (corruptions) or ε (noise, attacks).
DRIFT_COLUMNS = ["job_id", "family", "perturbation", "strength", "variant", "attribute"]
DRIFT_COLUMNS += ["mask_cosine", "importance_rank_correlation", "n"]
DRIFT_SORT_KEY = ["family", "perturbation", "strength", "attribute", "variant", "job_id"]
SANITY_COLUMNS = [f"sanity_{check}" for check in CHECKS] + ["sanity_all"]
SUMMARY_COLUMNS = [
    "level",
    "variant",
    "transform",
    "attribute",
    "family",
    "perturbation",
    "severity",
    "epsilon",
    "source_variant",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "success_rate",
    "median_distance",
    "difference",
    "diff_ci_low",
    "diff_ci_high",
    "mcnemar_p",
    "auc",
    "mce",
    "relative_mce",
    *SANITY_COLUMNS,
]
