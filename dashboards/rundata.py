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
from safetensors import SafetensorError, safe_open

# The run directory's names, schemas and readers live in iamt.rundir (torch-free); the ones the
# app, `iamt` and the tests used from here are re-exported (`X as X`), not defined again.
from iamt.rundir import KNOWN_CSVS as KNOWN_CSVS
from iamt.rundir import MASK_TENSORS, RunDirectory
from iamt.rundir import SCHEMAS as SCHEMAS
from iamt.rundir import CsvSchema as CsvSchema
from iamt.rundir import RunDataError as RunDataError
from iamt.rundir import read_csv as read_csv


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
            if RunDirectory(path).is_run():
                rows.append(_run_row(path))
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["created", "name"], ascending=[False, True], na_position="last")


def _run_row(path: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"name": path.name, "status": "configured"}
    try:
        manifest = RunDirectory(path).read_manifest()
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
            config = RunDirectory(path).read_config()
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
    run = RunDirectory(run_dir)
    path = run.masks
    name = path.relative_to(run.root)  # masks/samples.safetensors, as the errors name it
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
        raise RunDataError(f"{name} is malformed: {error}") from error
    if "images" not in tensors or "labels" not in tensors:
        raise RunDataError(f"{name} lacks the 'images' or 'labels' tensor")
    masks: dict[tuple[str, str], np.ndarray] = {}
    for key, value in tensors.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == MASK_TENSORS:
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
