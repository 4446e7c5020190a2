"""The benchmark harness itself (not the machine's speed): it runs, every figure is a real
ratio of its raw timings, and the JSON matches the printed lines. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.figures import FIGURES
from benchmarks.run import main

pytestmark = pytest.mark.e2e


def test_quick_benchmarks_write_json_that_matches_the_printed_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "latest.json"
    main(
        [
            "--quick",
            "--repeats",
            "1",
            "--only",
            "variant_floor",
            "pgd_overhead",
            "shared_variants_vs_separate",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    names = ["variant_floor", "pgd_overhead", "shared_variants_vs_separate"]
    assert [figure["name"] for figure in record["figures"]] == names
    for figure in record["figures"]:
        assert figure["line"] in printed
        assert len(figure["ratios"]) == len(figure["raw"]) == 1
        assert figure["median"] == figure["ratios"][0] > 0
        assert figure["passed"] == (figure["median"] <= figure["target"])
    variant = record["figures"][0]["raw"][0]
    # The floor: the images made once, the shared inference, drift's statistics on its masks.
    floor = variant["perturb_s"] + variant["inference_s"] + variant["drift_s"]
    assert record["figures"][0]["ratios"][0] == pytest.approx(variant["sweep_s"] / floor)
    shared = record["figures"][2]
    assert shared["parameters"]["variants"] == 4
    assert shared["ratios"][0] == pytest.approx(
        shared["raw"][0]["together_s"] / shared["raw"][0]["separate_s"]
    )
    pgd = record["figures"][1]
    steps = pgd["parameters"]["steps"]
    assert pgd["ratios"][0] == pytest.approx(
        pgd["raw"][0]["pgd_s"] / (steps * pgd["raw"][0]["forward_backward_s"])
    )
    assert record["machine"]["cpu_count"] and record["machine"]["versions"]["torch"]
    assert record["throughput_images_per_s"]["clean_inference"] > 0
    assert "corruption/fog" in record["throughput_images_per_s"]


def test_an_unknown_figure_is_refused_with_the_valid_names() -> None:
    with pytest.raises(SystemExit, match="unknown figure"):
        main(["--only", "no_such_figure"])
    assert set(FIGURES) == {
        "sweep_overhead",
        "variant_floor",
        "scaling_2w",
        "pgd_overhead",
        "train_overhead",
        "driver_rss",
        "native_corruption_speedup",
        "shared_variants_resnet18",
        "shared_variants_vs_separate",
        "shared_variants_vs_separate_resnet18",
    }
