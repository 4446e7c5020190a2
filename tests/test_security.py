"""No code path can unpickle a file: every `torch.load` passes `weights_only=True`, and nothing
calls pickle's loaders (or numpy's/pandas' pickle readers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["iamt", "robustness", "cluster", "dashboards", "benchmarks"]
SOURCES = sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))
FORBIDDEN = re.compile(
    r"\b(c?pickle\.loads?|cloudpickle\.loads?|pd\.read_pickle|pandas\.read_pickle|"
    r"allow_pickle\s*=\s*True|dill\.loads?)\b"
)


def _call_text(source: str, start: int) -> str:
    """The text of the call whose opening parenthesis is at or after `start`."""
    depth = 0
    for index in range(source.index("(", start), len(source)):
        depth += {"(": 1, ")": -1}.get(source[index], 0)
        if depth == 0:
            return source[start : index + 1]
    return source[start:]


def test_the_scan_sees_the_packages() -> None:
    assert len(SOURCES) > 30
    assert any(path.name == "train.py" and path.parent.name == "cluster" for path in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_unpickling(path: Path) -> None:
    source = path.read_text()
    for match in re.finditer(r"\btorch\.load\s*\(", source):
        call = _call_text(source, match.start())
        assert re.search(r"weights_only\s*=\s*True", call), f"{path}: {call}"
    found = FORBIDDEN.findall(source)
    assert not found, f"{path}: {found}"


def test_the_scan_would_catch_a_planted_unsafe_load() -> None:
    planted = "state = torch.load(\n    path, map_location='cpu'\n)\nother = pickle.loads(data)\n"
    match = re.search(r"\btorch\.load\s*\(", planted)
    assert match and not re.search(r"weights_only\s*=\s*True", _call_text(planted, match.start()))
    assert FORBIDDEN.findall(planted) == ["pickle.loads"]
