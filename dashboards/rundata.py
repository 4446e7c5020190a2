"""Read a run directory for the dashboard and the report: files only, never torch or ray.

Everything here is pure (paths in, DataFrames/dicts out), so it is testable without the
Streamlit runtime; the app wraps the loaders in `st.cache_data` keyed by the file's mtime.
A run may be read while it is being written, so a missing file is normal (loaders return None
where noted) and a malformed one raises `RunDataError` naming the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import SafetensorError, safe_open

# The run directory's names, schemas and readers live in iamt.rundir (torch-free); the ones the
# app, `iamt` and the tests used from here are re-exported (`X as X`), not defined again.
from iamt.rundir import CLEAN, MASK_TENSORS, RESULTS, SEARCH_REPORT, SEARCH_TABLE, RunDirectory
from iamt.rundir import KNOWN_CSVS as KNOWN_CSVS
from iamt.rundir import SCHEMAS as SCHEMAS
from iamt.rundir import STUDY_MEMBERS as STUDY_MEMBERS
from iamt.rundir import CsvSchema as CsvSchema
from iamt.rundir import RunDataError as RunDataError
from iamt.rundir import read_csv as read_csv
from iamt.vocabulary import NORMAL

# The dashboard names a study's member "<study>/<member>".
MEMBER_SEPARATOR = "/"
RUN_COLUMNS = [
    "name",
    "kind",  # run, study (a directory of member runs) or member (a run inside a study)
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


def _plain_name(name: str, whole: str) -> None:
    """Refuse anything but one plain directory name (no separators, '..', '~' or NUL)."""
    if not name or name in (".", "..") or "\x00" in name or name.startswith("~"):
        raise RunDataError(
            f"invalid run name {whole!r}: expected a plain directory name under runs/"
        )
    if "/" in name or "\\" in name:
        raise RunDataError(
            f"invalid run name {whole!r}: a run name is a plain directory name or "
            f"<study>{MEMBER_SEPARATOR}<member> (no '..' or absolute paths)"
        )


def safe_run_dir(runs_dir: Path, name: str) -> Path:
    """The run directory `runs_dir/name`, or the study member `runs_dir/STUDY/members/MEMBER`
    for a name "STUDY/MEMBER"; anything else is refused (a URL query parameter picks the run,
    so it is untrusted input)."""
    if not isinstance(name, str):
        raise RunDataError(
            f"invalid run name {name!r}: expected a plain directory name under runs/"
        )
    parts = name.split(MEMBER_SEPARATOR)
    if len(parts) > 2:
        _plain_name(name, name)  # raises: more than one separator
    for part in parts:
        _plain_name(part, name)
    root = Path(runs_dir).resolve()
    study = (root / parts[0]).resolve()
    # Resolving follows symlinks: a link pointing outside runs_dir is refused too.
    if study.parent != root:
        raise RunDataError(f"invalid run name {name!r}: it resolves outside {root}")
    candidate = study
    if len(parts) == 2:
        members = study / STUDY_MEMBERS
        candidate = (members / parts[1]).resolve()
        if candidate.parent != members.resolve() or members.resolve().parent != study:
            raise RunDataError(f"invalid run name {name!r}: it resolves outside {study}")
    if not candidate.is_dir():
        raise RunDataError(f"no run named {name!r} in {root}")
    return candidate


def run_name(runs_dir: Path, run_dir: Path) -> str:
    """The name `safe_run_dir` takes for `run_dir`: "run", or "study/member" for a member."""
    parts = Path(run_dir).resolve().relative_to(Path(runs_dir).resolve()).parts
    if len(parts) == 3 and parts[1] == STUDY_MEMBERS:
        return f"{parts[0]}{MEMBER_SEPARATOR}{parts[2]}"
    return MEMBER_SEPARATOR.join(parts)


def study_members(study_dir: Path) -> list[Path]:
    """The member run directories of a study directory, by name; [] for a plain run."""
    members = Path(study_dir) / STUDY_MEMBERS
    if not members.is_dir():
        return []
    return [path for path in sorted(members.iterdir()) if RunDirectory(path).is_run()]


def list_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run directory (one holding manifest.json or config.yaml), newest first; a
    study directory's row is followed by one row per member, named "<study>/<member>"."""
    root = Path(runs_dir)
    groups: list[list[dict[str, Any]]] = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            try:
                path = safe_run_dir(root, child.name)
            except RunDataError:
                continue  # e.g. a symlink leading outside runs_dir: not listed
            members = study_members(path)
            if members:
                study = {**_run_row(path), "kind": "study", "variants": None}
                if not RunDirectory(path).is_run():
                    study["status"] = f"study of {len(members)}"
                rows = [_run_row(m, f"{path.name}{MEMBER_SEPARATOR}{m.name}") for m in members]
                groups.append([study, *({**row, "kind": "member"} for row in rows)])
            elif RunDirectory(path).is_run():
                groups.append([_run_row(path)])
    # Newest first by each group's head; members stay right under their study, by name.
    groups.sort(key=lambda group: str(group[0].get("created") or ""), reverse=True)
    groups.sort(key=lambda group: group[0].get("created") is None)
    table = pd.DataFrame([row for group in groups for row in group], columns=RUN_COLUMNS)
    for column in ("jobs_done", "jobs_total", "jobs_failed"):  # counts, also beside a study
        counts = pd.to_numeric(table[column], errors="coerce")
        if (counts.dropna() % 1 == 0).all():
            table[column] = counts.astype("Int64")
    return table


def run_names(runs: pd.DataFrame) -> list[str]:
    """The names of `list_runs`'s rows that can be opened as a run: plain runs and study
    members (a study directory itself holds its members, not a run's files)."""
    return [
        str(name) for name, kind in zip(runs["name"], runs["kind"], strict=True) if kind != "study"
    ]


def _run_row(path: Path, name: str | None = None) -> dict[str, Any]:
    run = RunDirectory(path)
    row: dict[str, Any] = {"name": name or path.name, "kind": "run", "status": "configured"}
    try:
        manifest = run.read_manifest()
    except RunDataError:
        manifest, row["status"] = None, "unreadable manifest"
    if manifest is not None:
        jobs = manifest.get("jobs") or {}
        row.update(
            status=manifest.get("status", "unknown"),
            stage=manifest.get("stage"),
            jobs_done=jobs.get("done"),
            jobs_total=jobs.get("total"),
            jobs_failed=jobs.get("failed"),
            dataset=manifest.get("dataset"),
            created=manifest.get("created"),
            finished=manifest.get("finished"),
        )
        done, total = row["jobs_done"], row["jobs_total"]
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            row["progress"] = done / total
    row["variants"] = ", ".join(run_variants(path)) or None
    if row.get("dataset") is None:
        try:
            config = run.read_config()
        except RunDataError:
            config = None
        if config is not None:
            data = config.get("data") or {}
            row["dataset"] = data.get("name") if isinstance(data, dict) else None
    return row


def _natural_key(name: str) -> tuple[bool, list[int | str]]:
    """normal first, then by name with numbers compared as numbers (front-2 < front-10)."""
    pieces = re.split(r"(\d+)", name)
    return name != NORMAL, [int(p) if p.isdigit() else p for p in pieces]


def variant_order(names: Iterable[object]) -> list[str]:
    """The variants named, once each, in the one order every chart and table uses: `normal`
    first, then by name (numbers as numbers); empty and missing names are dropped."""
    unique = {str(n) for n in names if isinstance(n, str) and n}
    return sorted(unique, key=_natural_key)


def _csv_column(path: Path, column: str) -> list[str]:
    """One column of a CSV as text, read cheaply (the Runs table re-reads every run); [] when
    the file or the column is missing or unreadable (the pages report a bad file)."""
    if not path.is_file():
        return []
    try:
        frame = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError):
        return []
    return frame[column].tolist()


def run_variants(run_dir: Path) -> list[str]:
    """Every variant of a run, as its files record them: the trained variants (manifest.json,
    clean.csv), every variant the sweep evaluated (results.csv: `searched` and the search-front
    variants included) and the search's (search.json's choice, search.csv's `variant`)."""
    run = RunDirectory(run_dir)
    names: list[object] = []
    try:
        manifest = run.read_manifest() or {}
        search = run.read_json(SEARCH_REPORT) or {}
    except RunDataError:
        manifest, search = {}, {}
    recorded = manifest.get("variants") or {}
    if isinstance(recorded, dict | list):
        names += list(recorded)
    if search.get("chosen"):
        names.append(search.get("variant"))
    for filename in (CLEAN, RESULTS, SEARCH_TABLE):
        names += _csv_column(run / filename, "variant")
    return variant_order(names)


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


def fit_image(picture: np.ndarray, size: int) -> np.ndarray:
    """An HW or HWC image resampled to exactly (size, size) by nearest neighbour: pixels stay
    sharp (what you see is the mask's resolution) and every picture gets the one size."""
    rows = np.arange(size) * picture.shape[0] // size
    columns = np.arange(size) * picture.shape[1] // size
    return picture[rows][:, columns]


def mask_image(mask: np.ndarray, size: int, vmax: float | None = None) -> np.ndarray:
    """One (h, w) mask as a (size, size) uint8 greyscale image, divided by `vmax` (default:
    its own maximum; emphasized masks may exceed 1)."""
    array = np.asarray(mask, dtype=np.float32)
    top = vmax if vmax is not None else (float(np.nanmax(array)) if array.size else 0.0)
    array = array / top if top > 0 else np.zeros_like(array)
    return fit_image(to_uint8_image(array), size)


@dataclass(frozen=True)
class Gallery:
    """The Attention page's mask gallery: sample images and each variant's masks of one
    attribute and channel, every picture (size, size), the masks on one brightness scale."""

    images: list[np.ndarray]  # (size, size, 3) uint8
    masks: dict[str, list[np.ndarray]]  # variant -> (size, size) uint8, same order as images
    vmax: float  # the masks' shared maximum (1.0 without masks)


def mask_gallery(
    samples: MaskSamples,
    attribute: str,
    channel: int,
    variants: Iterable[str],
    *,
    count: int,
    size: int,
) -> Gallery:
    """The first `count` samples and the masks of `variants` (those the file holds): drawn at
    one size whatever the variant, and scaled to one maximum so emphasis shows as brightness."""
    count = min(count, samples.images.shape[0])
    stacks = {
        variant: samples.masks[(variant, attribute)][:count, channel]
        for variant in variants
        if (variant, attribute) in samples.masks
    }
    top = float(np.nanmax(np.stack(list(stacks.values())))) if stacks else 1.0
    return Gallery(
        images=[fit_image(to_uint8_image(image), size) for image in samples.images[:count]],
        masks={v: [mask_image(mask, size, vmax=top) for mask in m] for v, m in stacks.items()},
        vmax=top,
    )
