"""What every dashboard page shares: cached loaders keyed by file mtime, and chart/message
helpers. Streamlit only here and in the pages; the data work lives in the pure modules."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboards import charts, rundata
from iamt.rundir import CLEAN, MANIFEST, RESULTS, SEARCH_REPORT, SEARCH_TABLE, RunDirectory


def runs_root() -> Path:
    return Path(os.environ.get("IAMT_RUNS_DIR", "runs"))


# --- cached loaders: keyed by (path, mtime), so a file rewritten mid-run is read again --------


@st.cache_data(show_spinner=False, max_entries=128)
def _cached_csv(path: str, mtime: float) -> pd.DataFrame:
    del mtime  # part of the cache key only
    return rundata.read_csv(Path(path))


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_masks(run_dir: str, mtime: float) -> rundata.MaskSamples | None:
    del mtime
    return rundata.read_masks(Path(run_dir))


@st.cache_data(show_spinner=False, max_entries=32)
def _cached_variants(run_dir: str, mtimes: tuple[float, ...]) -> list[str]:
    del mtimes
    return rundata.run_variants(Path(run_dir))


def load_csv(run_dir: Path, filename: str) -> pd.DataFrame | None:
    """The CSV, or None when missing (quietly) or malformed (with an error naming the file)."""
    path, mtime = rundata.file_key(run_dir / filename)
    if mtime < 0:
        return None
    try:
        return _cached_csv(path, mtime)
    except rundata.RunDataError as error:
        st.error(f"Cannot read `{filename}`: {error}")
        return None


def load_json(run_dir: Path, filename: str) -> dict[str, Any] | None:
    """A JSON object of the run (manifest.json, search.json), or None when missing or
    malformed (with an error naming the file)."""
    try:
        return RunDirectory(run_dir).read_json(filename)
    except rundata.RunDataError as error:
        st.error(f"Cannot read `{filename}`: {error}")
        return None


def load_manifest(run_dir: Path) -> dict[str, Any] | None:
    return load_json(run_dir, MANIFEST)


def masks_name(run_dir: Path) -> str:
    """The mask samples' path inside the run, as messages name it."""
    run = RunDirectory(run_dir)
    return str(run.masks.relative_to(run.root))


def load_masks(run_dir: Path) -> rundata.MaskSamples | None:
    _, mtime = rundata.file_key(RunDirectory(run_dir).masks)
    if mtime < 0:
        return None
    try:
        return _cached_masks(str(run_dir), mtime)
    except rundata.RunDataError as error:
        st.error(f"Cannot read `{masks_name(run_dir)}`: {error}")
        return None


def load_variants(run_dir: Path) -> list[str]:
    """The run's variants (`rundata.run_variants`): every chart of the run takes its colours
    from this one list, so a variant keeps its colour on every page."""
    files = (MANIFEST, CLEAN, RESULTS, SEARCH_TABLE, SEARCH_REPORT)
    mtimes = tuple(rundata.file_key(run_dir / name)[1] for name in files)
    return _cached_variants(str(run_dir), mtimes)


# --- drawing ----------------------------------------------------------------------------------


def show_chart(build: Callable[..., charts.Chart], *args: Any, **kwargs: Any) -> None:
    """Draw a chart; data the builder does not expect gives an error box, not a crash."""
    try:
        chart = build(*args, **kwargs)
    except (KeyError, ValueError, TypeError) as error:
        st.error(f"Cannot draw {build.__name__}: {type(error).__name__}: {error}")
        return
    st.altair_chart(chart, width="content")


def ci_text(low: Any, high: Any, fmt: str = ".3f") -> str:
    if pd.isna(low) or pd.isna(high):
        return ""
    return f"[{low:{fmt}}, {high:{fmt}}]"


def missing(what: str, filename: str) -> None:
    st.info(f"No {what} yet (`{filename}` is not in this run).")
