"""The run directory: the one home of its paths, its file schemas and its manifest.

Every stage that writes a run (training, the sweep, the search, the report) and everything that
reads one (the dashboard, `iamt report`) goes through this module; no other file spells a run
file's name. It imports no torch (the dashboard must start without it), only pandas and yaml.

    runs/<name>/
      config.yaml          the resolved config
      manifest.json        status, stage, versions, seeds, hardware, timings
      checkpoints/         normal.safetensors + normal.json
      importance.csv       attribute, channel, score, rank
      clean.csv            clean accuracy per variant and attribute
      masks/               samples.safetensors: sample images and attention masks per variant
      parts/               one CSV per finished job (resume skips their job ids)
      quarantine/          damaged part files, moved aside and rerun
      results.csv          merged rows, one per job × variant × attribute
      summary.csv          aggregates with CIs, paired tests, mCE and sanity flags
      drift.csv            attention drift per job × variant × attribute
      failures.csv         job_id, spec, error, attempts
      timings.csv          job_id, node, worker, attempts, wall_s
      search.csv           one row per emphasis-search trial; search.json its choice
      search/              Ray Tune's records;  ray_train/  Ray Train's checkpoints
      report.html          the static report; plots/ beside it
      .iamt.lock           held (flock) by the one command writing the run (iamt/runlock.py)

A run may be read while it is being written: a missing file is normal (readers return None)
and a malformed one raises `RunDataError` naming the file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from iamt.io import write_csv, write_json
from iamt.vocabulary import MASKING_CHECKS, NORMAL, SANITY_CHECKS

# --------------------------------------------------------------------------- file names

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
IMPORTANCE = "importance.csv"
CLEAN = "clean.csv"
MASKS = "masks"
MASK_SAMPLES = "samples.safetensors"
MASK_TENSORS = "masks"  # in MASK_SAMPLES: the masks' keys, masks/<variant>/<attribute>
PARTS = "parts"
QUARANTINE = "quarantine"
RESULTS = "results.csv"
SUMMARY = "summary.csv"
DRIFT = "drift.csv"
FAILURES = "failures.csv"
TIMINGS = "timings.csv"
SEARCH_TABLE = "search.csv"
SEARCH_REPORT = "search.json"
TUNE_RECORDS = "search"  # Ray Tune's experiment records
TRAIN_STORAGE = "ray_train"  # Ray Train's storage path (per-epoch checkpoints)
REPORT = "report.html"
PLOTS = "plots"
LOCK = ".iamt.lock"  # flock'ed by the writing command; holds its pid, host and command

# A study directory (`iamt study`): one run directory per member, STUDY_DIR/members/<name>/,
# and the study's own tables and report beside them.
STUDY_MEMBERS = "members"
STUDY_CONFIG = "study.yaml"  # the study file as read (its base path as written)
STUDY_TABLE = "study.csv"  # per grid point × variant × family × attribute: the seed-aware effect
STUDY_SEEDS = "study_seeds.csv"  # per member × variant × family × attribute: each seed's effect
STUDY_GRID = "study_grid.csv"  # differences of effects between grid points
STUDY_REPORT = "study.html"
STUDY_COLUMNS = [
    "grid_point",  # e.g. "train.mask_sparsity=0.1" (";"-joined when several keys), or "base"
    "variant",
    "family",  # clean, noise, corruption, adversarial
    "attribute",  # an attribute, or "all": pooled over attributes
    "n_seeds",
    "effect",  # mean over seeds of the paired accuracy difference variant − normal (fraction)
    "ci_low",  # 95 % hierarchical bootstrap: seeds, then images within each seed
    "ci_high",
    "p_value",  # two-sided, normal, from the same bootstrap's standard error
    "p_holm",  # Holm-adjusted over every row of the table
    "verdict",  # helps, hurts, no consistent effect
    "seeds_above_0",  # seeds whose own (image bootstrap) CI lies above 0
    "seeds_below_0",
    "normal_accuracy",  # mean over seeds
    "normal_accuracy_sd",  # between-seed standard deviation (ddof 1)
]
STUDY_SEED_COLUMNS = [
    "grid_point",
    "seed",
    "member",
    "variant",
    "family",
    "attribute",
    "effect",
    "ci_low",
    "ci_high",
    "normal_accuracy",
]
STUDY_GRID_COLUMNS = [
    "variant",
    "family",
    "attribute",
    "grid_point_a",
    "grid_point_b",
    "difference",  # effect at b − effect at a
    "ci_low",
    "ci_high",
]

# What a sweep or a search derives from the checkpoint: stale as soon as the checkpoint changes.
EVALUATION_OUTPUTS = (
    PARTS,
    RESULTS,
    SUMMARY,
    DRIFT,
    FAILURES,
    TIMINGS,
    REPORT,
    PLOTS,
    SEARCH_TABLE,
    SEARCH_REPORT,
    TUNE_RECORDS,
)


class RunDataError(ValueError):
    """A run directory or one of its files cannot be read; the message names the file/value."""


@dataclass(frozen=True)
class RunDirectory:
    """The paths of one run directory, and reading and updating its manifest."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def checkpoint_stem(self) -> Path:
        """The normal model's checkpoint, STEM.safetensors + STEM.json."""
        return self.root / CHECKPOINTS / NORMAL

    @property
    def masks(self) -> Path:
        return self.root / MASKS / MASK_SAMPLES

    @property
    def parts(self) -> Path:
        return self.root / PARTS

    def part(self, job_id: str) -> Path:
        return self.parts / f"{job_id}.csv"

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE

    @property
    def search_report(self) -> Path:
        return self.root / SEARCH_REPORT

    @property
    def tune_records(self) -> Path:
        return self.root / TUNE_RECORDS

    @property
    def train_storage(self) -> Path:
        return self.root / TRAIN_STORAGE

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    def is_run(self) -> bool:
        return self.manifest.is_file() or self.config.is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_stem.with_suffix(".json").is_file()

    # ----------------------------------------------------------------------- reading

    def read_csv(self, name: str) -> pd.DataFrame | None:
        """A CSV of the run, checked against its schema; None when it does not exist (yet)."""
        path = self.root / name
        return read_csv(path) if path.is_file() else None

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.root / name
        write_csv(path, frame)
        return path

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON object of the run (the manifest, search.json), or None when missing."""
        path = self.root / name
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunDataError(f"{name} is malformed: {error}") from error
        if not isinstance(payload, dict):
            raise RunDataError(f"{name} is malformed: expected a JSON object")
        return payload

    def read_manifest(self) -> dict[str, Any] | None:
        return self.read_json(MANIFEST)

    def read_config_text(self) -> str | None:
        """The resolved config.yaml as text, or None when missing."""
        if not self.config.is_file():
            return None
        try:
            return self.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise RunDataError(f"{CONFIG} cannot be read: {error}") from error

    def read_config(self) -> dict[str, Any] | None:
        """The resolved config.yaml parsed (safe_load), or None when missing."""
        text = self.read_config_text()
        if text is None:
            return None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise RunDataError(f"{CONFIG} is malformed: {error}") from error
        if not isinstance(config, dict):
            raise RunDataError(f"{CONFIG} is malformed: expected a mapping")
        return config

    # ----------------------------------------------------------------------- writing

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.manifest, manifest)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into manifest.json (atomically) and return the new manifest."""
        manifest = {**(self.read_manifest() or {}), **fields}
        self.write_manifest(manifest)
        return manifest

    def clear_evaluation(self) -> None:
        """Remove every output derived from the checkpoint: job ids name the perturbation, not
        the model, so parts of an earlier model must never be resumed into a new one."""
        for name in EVALUATION_OUTPUTS:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


# --------------------------------------------------------------------------- columns

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
# Read as text: a hex job id such as "3874285363113e16" or "0123..." would parse as a number,
# and an outcomes string would lose its leading zeros.
PART_DTYPES = {"job_id": str, "outcomes": str, "source_variant": str, "engine": str}
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
SANITY_COLUMNS = [f"sanity_{check}" for check in (*SANITY_CHECKS, *MASKING_CHECKS)]
SANITY_COLUMNS += ["sanity_all"]
# The gradient-masking statistics (robustness/gradients.py), per variant × attribute; summary.csv
# carries the fractions and the variant's logit scale ÷ the normal model's.
GRADIENT_STATISTICS_COLUMNS = ["variant", "attribute", "n", "gradient_zero_fraction"]
GRADIENT_STATISTICS_COLUMNS += ["gradient_nonfinite_fraction", "logit_scale"]
MASKING_COLUMNS = ["gradient_zero_fraction", "gradient_nonfinite_fraction", "logit_scale_ratio"]
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
    "p_holm",  # mcnemar_p, Holm-adjusted over the variant's family-level tests
    "auc",
    "mce",  # ImageNet-C's mCE over the 15 benchmark corruptions present
    "relative_mce",
    "mce_corruptions",  # how many of the 15 benchmark corruptions the sweep has
    "mce_validation",  # the same over the 4 validation corruptions, apart
    "relative_mce_validation",
    "mean_corruption_accuracy",  # RobustBench's: mean over benchmark corruption × severity
    *MASKING_COLUMNS,
    *SANITY_COLUMNS,
]
# summary.csv columns newer than its first format: an older run reads them as empty.
SUMMARY_ADDED_LATER = (
    "p_holm",
    "mce_corruptions",
    "mce_validation",
    "relative_mce_validation",
    "mean_corruption_accuracy",
    *MASKING_COLUMNS,
    *(f"sanity_{check}" for check in MASKING_CHECKS),
)
SEARCH_COLUMNS = [
    "spec",
    "clean_accuracy",
    "robust_accuracy",  # mean over every perturbed set (points)
    "noise_accuracy",  # mean over the noise sets
    "corruption_accuracy",
    "adversarial_accuracy",  # under search.attack, when configured
    "clean_cost",  # identity's clean accuracy minus this one's
    "robustness_gain",  # pooled: robust_accuracy minus identity's
    "noise_gain",
    "corruption_gain",
    "adversarial_gain",
    "worst_family_gain",  # the smallest of the measured families' gains
    "score",  # what search.rule maximises
    "pareto",  # on the front over (clean_cost, each family's gain)
    "chosen",
    "variant",  # the test sweep's variant that re-measures it: normal, searched, front-k or ""
    "test_clean_cost",  # clean_cost re-measured on the test split (after the sweep)
    "test_robustness_gain",  # robustness_gain re-measured on the test split's sweep
]


# --------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class CsvSchema:
    """What a well-formed file holds: its columns, the ones never empty, their types."""

    columns: tuple[str, ...]
    required: tuple[str, ...]  # never empty in a well-formed row
    numeric: tuple[str, ...] = ()
    boolean: tuple[str, ...] = ()
    # Columns newer than the file format: a run written before them reads them as empty.
    added_later: tuple[str, ...] = ()


_RATES = ("accuracy", "ci_low", "ci_high", "success_rate", "median_distance")
SCHEMAS: dict[str, CsvSchema] = {
    RESULTS: CsvSchema(
        tuple(RESULT_COLUMNS),
        required=("job_id", "variant", "attribute", "family", "n", "correct", "accuracy", "seed"),
        numeric=("severity", "epsilon", "n", "correct", *_RATES, "seed"),
        added_later=("engine",),  # the corruption engine choice
    ),
    SUMMARY: CsvSchema(
        tuple(SUMMARY_COLUMNS),
        required=("level", "variant", "attribute", "family", "n", "accuracy", "ci_low", "ci_high"),
        numeric=(
            *("severity", "epsilon", "n", *_RATES, "difference", "diff_ci_low", "diff_ci_high"),
            *("mcnemar_p", "p_holm", "auc", "mce", "relative_mce", "mce_corruptions"),
            *("mce_validation", "relative_mce_validation", "mean_corruption_accuracy"),
            *MASKING_COLUMNS,
        ),
        boolean=tuple(SANITY_COLUMNS),
        added_later=SUMMARY_ADDED_LATER,
    ),
    CLEAN: CsvSchema(
        tuple(CLEAN_COLUMNS),
        required=("variant", "attribute", "n", "correct", "accuracy", "ci_low", "ci_high"),
        numeric=("n", "correct", "accuracy", "ci_low", "ci_high"),
    ),
    IMPORTANCE: CsvSchema(
        tuple(IMPORTANCE_COLUMNS),
        required=tuple(IMPORTANCE_COLUMNS),
        numeric=("channel", "score", "rank"),
    ),
    FAILURES: CsvSchema(tuple(FAILURE_COLUMNS), required=("job_id",)),
    TIMINGS: CsvSchema(tuple(TIMING_COLUMNS), required=("job_id",), numeric=("attempts", "wall_s")),
    # Optional: runs evaluated before attention drift was measured have no drift.csv.
    DRIFT: CsvSchema(
        tuple(DRIFT_COLUMNS),
        required=("job_id", "family", "perturbation", "variant", "attribute", "n"),
        numeric=("strength", "mask_cosine", "importance_rank_correlation", "n"),
    ),
    SEARCH_TABLE: CsvSchema(
        tuple(SEARCH_COLUMNS),
        required=("spec", "clean_accuracy", "robust_accuracy"),
        numeric=tuple(
            c for c in SEARCH_COLUMNS if c not in ("spec", "pareto", "chosen", "variant")
        ),
        boolean=("pareto", "chosen"),
        added_later=(  # the per-family search, then the front re-measured on test
            *("noise_accuracy", "corruption_accuracy", "noise_gain", "corruption_gain"),
            *("worst_family_gain", "score", "variant", "test_clean_cost"),
            "test_robustness_gain",
        ),
    ),
    # A study directory's tables (`iamt study`), beside its members rather than in a run.
    STUDY_TABLE: CsvSchema(
        tuple(STUDY_COLUMNS),
        required=("grid_point", "variant", "family", "attribute", "n_seeds", "effect", "verdict"),
        numeric=(
            *("n_seeds", "effect", "ci_low", "ci_high", "p_value", "p_holm"),
            *("seeds_above_0", "seeds_below_0", "normal_accuracy", "normal_accuracy_sd"),
        ),
    ),
    STUDY_SEEDS: CsvSchema(
        tuple(STUDY_SEED_COLUMNS),
        required=("grid_point", "seed", "member", "variant", "family", "attribute", "effect"),
        numeric=("seed", "effect", "ci_low", "ci_high", "normal_accuracy"),
    ),
    STUDY_GRID: CsvSchema(
        tuple(STUDY_GRID_COLUMNS),
        required=("variant", "family", "attribute", "grid_point_a", "grid_point_b", "difference"),
        numeric=("difference", "ci_low", "ci_high"),
    ),
}
STUDY_CSVS = (STUDY_TABLE, STUDY_SEEDS, STUDY_GRID)
# A run's own CSVs (what a run directory holds): the study tables live in a study directory.
KNOWN_CSVS = tuple(name for name in SCHEMAS if name not in STUDY_CSVS)


def read_csv(path: Path) -> pd.DataFrame:
    """Read a run CSV; for the known files check columns, required cells and number formats.

    Raises RunDataError naming the file when it is empty, truncated or malformed."""
    path = Path(path)
    name = path.name
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise RunDataError(f"{name}: cannot read {path}: {error}") from error
    if not raw.strip():
        raise RunDataError(f"{name} is empty (truncated or still being written?)")
    # Every writer ends the file with a newline; its absence means the file was cut off.
    if not raw.endswith(b"\n"):
        raise RunDataError(f"{name} is truncated: it does not end with a newline")
    # Keep strings such as "none" or "NA"-like variant names as they are; only empty cells are NA.
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise RunDataError(f"{name} is malformed: {error}") from error
    schema = SCHEMAS.get(name)
    return table if schema is None else _checked(table, name, schema)


def _checked(table: pd.DataFrame, name: str, schema: CsvSchema) -> pd.DataFrame:
    for column in schema.added_later:
        if column not in table.columns:
            table[column] = pd.NA
    missing = [column for column in schema.columns if column not in table.columns]
    if missing:
        raise RunDataError(f"{name} lacks the column(s) {', '.join(missing)} (truncated?)")
    for column in schema.required:
        empty = table[column].isna()
        if empty.any():
            line = int(np.flatnonzero(empty.to_numpy())[0]) + 2  # 1-based, after the header
            raise RunDataError(f"{name}: line {line} has no {column!r} (truncated or malformed)")
    for column in schema.numeric:
        try:
            table[column] = pd.to_numeric(table[column], errors="raise")
        except (ValueError, TypeError) as error:
            raise RunDataError(f"{name}: column {column!r} is not numeric: {error}") from error
    for column in schema.boolean:
        table[column] = _to_boolean(table[column], name, column)
    return table


def _to_boolean(values: pd.Series, name: str, column: str) -> pd.Series:
    mapping = {"true": True, "false": False, "1": True, "0": False}
    lowered = values.str.strip().str.lower()
    unknown = lowered.notna() & ~lowered.isin(list(mapping))
    if unknown.any():
        bad = values[unknown].iloc[0]
        raise RunDataError(f"{name}: column {column!r} holds {bad!r}, expected True/False")
    return lowered.map(mapping).astype("boolean")
