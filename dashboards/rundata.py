"""Read a run directory for the dashboard and the report: files only, never torch or ray.

Everything here is pure (paths in, DataFrames/dicts out), so it is testable without the
Streamlit runtime; the app wraps the loaders in `st.cache_data` keyed by the file's mtime.
A run may be read while it is being written, so a missing file is normal (loaders return None
where noted) and a malformed one raises `RunDataError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from safetensors import SafetensorError, safe_open

# Plain constants (no torch): the same column lists the writer uses.
from robustness import schema

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
MASKS = Path("masks") / "samples.safetensors"

# Columns each known file must have; the first group of each entry must never be empty
# (a truncated last line leaves them empty), the numeric ones must parse as numbers.
SANITY_COLUMNS = tuple(schema.SANITY_COLUMNS)


@dataclass(frozen=True)
class CsvSchema:
    columns: tuple[str, ...]
    required: tuple[str, ...]  # never empty in a well-formed row
    numeric: tuple[str, ...] = ()
    boolean: tuple[str, ...] = ()
    # Columns newer than the file format: a run written before them reads them as empty.
    added_later: tuple[str, ...] = ()


SCHEMAS: dict[str, CsvSchema] = {
    "results.csv": CsvSchema(
        tuple(schema.RESULT_COLUMNS),
        required=("job_id", "variant", "attribute", "family", "n", "correct", "accuracy", "seed"),
        numeric=(
            "severity",
            "epsilon",
            "n",
            "correct",
            "accuracy",
            "ci_low",
            "ci_high",
            "success_rate",
            "median_distance",
            "seed",
        ),
        added_later=("engine",),  # the corruption engine choice
    ),
    "summary.csv": CsvSchema(
        tuple(schema.SUMMARY_COLUMNS),
        required=("level", "variant", "attribute", "family", "n", "accuracy", "ci_low", "ci_high"),
        numeric=(
            "severity",
            "epsilon",
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
        ),
        boolean=SANITY_COLUMNS,
    ),
    "clean.csv": CsvSchema(
        tuple(schema.CLEAN_COLUMNS),
        required=("variant", "attribute", "n", "correct", "accuracy", "ci_low", "ci_high"),
        numeric=("n", "correct", "accuracy", "ci_low", "ci_high"),
    ),
    "importance.csv": CsvSchema(
        tuple(schema.IMPORTANCE_COLUMNS),
        required=tuple(schema.IMPORTANCE_COLUMNS),
        numeric=("channel", "score", "rank"),
    ),
    "failures.csv": CsvSchema(tuple(schema.FAILURE_COLUMNS), required=("job_id",)),
    "timings.csv": CsvSchema(
        tuple(schema.TIMING_COLUMNS),
        required=("job_id",),
        numeric=("attempts", "wall_s"),
    ),
    # Optional: runs evaluated before attention drift was measured have no drift.csv.
    "drift.csv": CsvSchema(
        tuple(schema.DRIFT_COLUMNS),
        required=("job_id", "family", "perturbation", "variant", "attribute", "n"),
        numeric=("strength", "mask_cosine", "importance_rank_correlation", "n"),
    ),
}
KNOWN_CSVS = tuple(SCHEMAS)


class RunDataError(ValueError):
    """A run directory or one of its files cannot be read; the message names the file/value."""


def safe_run_dir(runs_dir: Path, name: str) -> Path:
    """The run directory `runs_dir/name`, refusing anything but a plain directory name directly
    under runs_dir (a URL query parameter picks the run, so it is untrusted input)."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise RunDataError(f"invalid run name {name!r}: expected a directory name under runs/")
    if "/" in name or "\\" in name or "\x00" in name or name.startswith("~"):
        raise RunDataError(
            f"invalid run name {name!r}: a run name is a plain directory name "
            f"(no '/', '..' or absolute paths)"
        )
    root = Path(runs_dir).resolve()
    candidate = (root / name).resolve()
    # Resolving follows symlinks: a link pointing outside runs_dir is refused too.
    if candidate.parent != root:
        raise RunDataError(f"invalid run name {name!r}: it resolves outside {root}")
    if not candidate.is_dir():
        raise RunDataError(f"no run named {name!r} in {root}")
    return candidate


def _is_run(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / CONFIG).is_file()


def list_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run directory (one holding manifest.json or config.yaml), newest first."""
    columns = [
        "name",
        "status",
        "stage",
        "jobs_done",
        "jobs_total",
        "jobs_failed",
        "progress",
        "dataset",
        "variants",
        "created",
        "finished",
    ]
    root = Path(runs_dir)
    rows: list[dict[str, Any]] = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            try:
                path = safe_run_dir(root, child.name)
            except RunDataError:
                continue  # e.g. a symlink leading outside runs_dir: not listed
            if _is_run(path):
                rows.append(_run_row(path))
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["created", "name"], ascending=[False, True], na_position="last")


def _run_row(path: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"name": path.name, "status": "configured"}
    try:
        manifest = read_manifest(path)
    except RunDataError:
        manifest, row["status"] = None, "unreadable manifest"
    if manifest is not None:
        jobs = manifest.get("jobs") or {}
        variants = manifest.get("variants") or {}
        row.update(
            status=manifest.get("status", "unknown"),
            stage=manifest.get("stage"),
            jobs_done=jobs.get("done"),
            jobs_total=jobs.get("total"),
            jobs_failed=jobs.get("failed"),
            dataset=manifest.get("dataset"),
            variants=", ".join(variants) if isinstance(variants, dict | list) else None,
            created=manifest.get("created"),
            finished=manifest.get("finished"),
        )
        done, total = row["jobs_done"], row["jobs_total"]
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            row["progress"] = done / total
    if row.get("dataset") is None:
        try:
            config = read_config(path)
        except RunDataError:
            config = None
        if config is not None:
            data = config.get("data") or {}
            row["dataset"] = data.get("name") if isinstance(data, dict) else None
    return row


def file_key(path: Path) -> tuple[str, float]:
    """(path, mtime) — the cache key of a file's contents; mtime -1 when it does not exist."""
    try:
        return str(path), path.stat().st_mtime
    except FileNotFoundError:
        return str(path), -1.0


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
    schema = SCHEMAS.get(name)
    # Keep strings such as "none" or "NA"-like variant names as they are; only empty cells are NA.
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise RunDataError(f"{name} is malformed: {error}") from error
    if schema is None:
        return table
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


def read_run_csv(run_dir: Path, filename: str) -> pd.DataFrame | None:
    """A CSV of the run, or None when it does not exist (yet)."""
    path = Path(run_dir) / filename
    return read_csv(path) if path.is_file() else None


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """manifest.json as a dict, or None when the run has none yet."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDataError(f"{MANIFEST} is malformed: {error}") from error
    if not isinstance(manifest, dict):
        raise RunDataError(f"{MANIFEST} is malformed: expected a JSON object")
    return manifest


def read_config_text(run_dir: Path) -> str | None:
    """The resolved config.yaml as text, or None when missing."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RunDataError(f"{CONFIG} cannot be read: {error}") from error


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config.yaml parsed (safe_load), or None when missing."""
    text = read_config_text(run_dir)
    if text is None:
        return None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RunDataError(f"{CONFIG} is malformed: {error}") from error
    if not isinstance(config, dict):
        raise RunDataError(f"{CONFIG} is malformed: expected a mapping")
    return config


@dataclass
class MaskSamples:
    """masks/samples.safetensors: sample images and each variant's attention masks."""

    images: np.ndarray  # (K, 3, H, W) float32 in [0, 1]
    labels: np.ndarray  # (K, A) int64
    attributes: list[str]
    variants: dict[str, str]  # variant -> transform spec
    masks: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (K, C, h, w)

    @property
    def channels(self) -> int:
        return next(iter(self.masks.values())).shape[1] if self.masks else 0


def read_masks(run_dir: Path) -> MaskSamples | None:
    """The mask samples of a run, or None when the run has none."""
    path = Path(run_dir) / MASKS
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            keys = list(handle.keys())
            tensors = {key: handle.get_tensor(key) for key in keys}
        attributes = json.loads(metadata.get("attributes", "[]"))
        variants = json.loads(metadata.get("variants", "{}"))
    except (OSError, SafetensorError, json.JSONDecodeError) as error:
        raise RunDataError(f"{MASKS} is malformed: {error}") from error
    if "images" not in tensors or "labels" not in tensors:
        raise RunDataError(f"{MASKS} lacks the 'images' or 'labels' tensor")
    masks: dict[tuple[str, str], np.ndarray] = {}
    for key, value in tensors.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "masks":
            masks[(parts[1], parts[2])] = value.astype(np.float32)
    return MaskSamples(
        images=tensors["images"].astype(np.float32),
        labels=tensors["labels"],
        attributes=[str(a) for a in attributes],
        variants={str(k): str(v) for k, v in dict(variants).items()},
        masks=masks,
    )


def to_uint8_image(image: np.ndarray, scale: int = 1) -> np.ndarray:
    """A CHW (or HW) float image in [0, 1] as HWC (or HW) uint8, upscaled by pixel repetition."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = array.transpose(1, 2, 0)
    array = np.clip(np.nan_to_num(array), 0.0, 1.0)
    if scale > 1:
        array = array.repeat(scale, axis=0).repeat(scale, axis=1)
    return (array * 255).round().astype(np.uint8)


def mask_image(mask: np.ndarray, size: int, vmax: float | None = None) -> np.ndarray:
    """One (h, w) mask as a (size, size)-ish uint8 greyscale image, divided by `vmax` (default:
    its own maximum; emphasized masks may exceed 1), upscaled by pixel repetition (no smoothing:
    what you see is the mask's resolution)."""
    array = np.asarray(mask, dtype=np.float32)
    top = vmax if vmax is not None else (float(np.nanmax(array)) if array.size else 0.0)
    array = array / top if top > 0 else np.zeros_like(array)
    return to_uint8_image(array, max(1, size // max(array.shape)))
