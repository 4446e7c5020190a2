"""`iamt report`: a static HTML report whose images exist, with the headline and methods."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cluster.cli import main


@pytest.fixture
def run_dir(evaluated_run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "tiny"
    shutil.copytree(evaluated_run_dir, target)
    return target


def test_report_images_exist_and_the_sections_are_there(run_dir: Path) -> None:
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 8
    for source in sources:
        assert source.startswith("plots/") and source.endswith(".png")
        image = run_dir / source
        assert image.is_file() and image.stat().st_size > 1000, source
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for heading in [
        "Clean accuracy",
        "Does emphasis help?",
        "Noise and corruptions",
        "Adversarial robustness",
        "Sanity checklist",
        "Channel importance",
        "Methods",
    ]:
        assert heading in page, heading
    # The methods name the transforms, the attacks with their parameters, counts and seeds.
    assert "topk:k=4,alpha=2" in page
    assert "linf_pgd(steps=3)" in page and "boundary(steps=10)" in page
    assert "run seed 3" in page
    # Which engine corrupted what: `auto` serves both of the fixture's corruptions natively.
    assert re.search(r"corruption engine.*native torch port[^<]*: fog, pixelate", page, re.S)
    # The verdict is generated from the CIs; the search section appears only after a search.
    assert "<b>Verdict.</b>" in page and "Emphasis search" not in page
    assert "not corrected for multiple comparisons" in page
    assert "<h2>Notes</h2>" not in page  # every chart was drawn
    assert "http://" not in page and "https://" not in page  # readable offline


def test_report_refuses_a_directory_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
