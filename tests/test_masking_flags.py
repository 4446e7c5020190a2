"""The per-variant gradient-masking flags: the statistics on real models (a model whose input
gradients are zero trips the flag, the trained one does not), the pure flag rules, their place
in summary.csv and the "unreliable" mark in the verdict."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from cluster.config import parse_config
from dashboards.verdict import unreliable, verdict
from iamt.data import Split, as_tensors, load_split
from iamt.rundir import MASKING_COLUMNS, SUMMARY, RunDirectory
from iamt.vocabulary import NORMAL, Family
from robustness.gradients import gradient_statistics
from robustness.results import finished_job_ids, read_parts
from robustness.results import summarize as summarize_parts
from robustness.runner import TrainRunSummary, load_trained
from robustness.sanity import LOGIT_SCALE_BOUNDS, MASKING, masking_flags
from tests.conftest import TINY

ATTRIBUTES = ["shape", "colour", "size", "background"]


class QuantizedInput(nn.Module):
    """The model behind an 8-bit quantizer, a non-differentiable step: its input gradient is
    exactly zero everywhere, while its predictions are those of the model on 8-bit images."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> object:
        return self.model(torch.round(images * 255) / 255)


class ScaledLogits(nn.Module):
    """The model with every logit multiplied by `factor`: same predictions, another scale."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, images: Tensor) -> object:
        output = self.model(images)
        output.logits = [logits * self.factor for logits in output.logits]
        return output


@pytest.fixture(scope="module")
def test_images() -> tuple[Tensor, Tensor]:
    config = parse_config(TINY)
    return as_tensors(load_split(config.data, Split.TEST, config.seed), 32)


def test_zeroed_gradients_trip_the_flag_and_the_trained_model_does_not(
    tiny_run: TrainRunSummary, test_images: tuple[Tensor, Tensor]
) -> None:
    model, _ = load_trained(tiny_run.run_dir)
    images, labels = test_images
    models = {NORMAL: model, "quantized": QuantizedInput(model), "hot": ScaledLogits(model, 5)}
    stats = gradient_statistics(models, images, labels, ATTRIBUTES, batch_size=10)
    stats = stats.set_index(["variant", "attribute"])
    assert len(stats) == 3 * len(ATTRIBUTES) and (stats["n"] == 32).all()
    assert (stats.loc[NORMAL, "gradient_zero_fraction"] == 0).all()
    assert (stats.loc["quantized", "gradient_zero_fraction"] == 1).all()
    assert (stats["gradient_nonfinite_fraction"] == 0).all()
    ratio = stats.loc["hot", "logit_scale"] / stats.loc[NORMAL, "logit_scale"]
    assert ratio.tolist() == pytest.approx([5.0] * len(ATTRIBUTES), rel=1e-5)
    for variant, tripped in [(NORMAL, True), ("quantized", False)]:
        row = stats.loc[(variant, "shape")]
        flags = masking_flags(
            gradient_zero_fraction=row["gradient_zero_fraction"],
            gradient_nonfinite_fraction=row["gradient_nonfinite_fraction"],
            logit_scale_ratio=1.0,
        )
        assert flags["nonzero_gradients"] is tripped


def test_the_flag_rules_at_their_thresholds() -> None:
    low, high = LOGIT_SCALE_BOUNDS
    common = {"gradient_zero_fraction": 0.01, "gradient_nonfinite_fraction": 0.01}
    assert list(masking_flags(**common, logit_scale_ratio=1.0)) == list(MASKING)
    assert masking_flags(**common, logit_scale_ratio=1.0)["nonzero_gradients"] is True
    bad = masking_flags(
        gradient_zero_fraction=0.0, gradient_nonfinite_fraction=0.03, logit_scale_ratio=1.0
    )
    assert bad["nonzero_gradients"] is False  # NaN or inf gradients count as much as zeros
    for ratio, passes in [(low, True), (high, True), (low * 0.99, False), (high * 1.01, False)]:
        flags = masking_flags(**common, logit_scale_ratio=ratio)
        assert flags["comparable_logit_scale"] is passes, ratio
    # Larger minimal distances yet lower FGSM accuracy: the attacks disagree.
    disagree = masking_flags(
        **common, logit_scale_ratio=1, distance_ratio=1.5, fgsm_difference=-0.1
    )
    assert disagree["minimisation_agrees_with_fgsm"] is False
    agree = masking_flags(**common, logit_scale_ratio=1, distance_ratio=1.5, fgsm_difference=0.1)
    assert agree["minimisation_agrees_with_fgsm"] is True
    unknown = masking_flags(
        gradient_zero_fraction=math.nan, gradient_nonfinite_fraction=0.0, logit_scale_ratio=None
    )
    assert set(unknown.values()) == {None}


def test_summary_carries_the_flags_and_the_verdict_marks_the_variant_unreliable(
    evaluated_run_dir: Path, tiny_run: TrainRunSummary, test_images: tuple[Tensor, Tensor]
) -> None:
    summary = RunDirectory(evaluated_run_dir).read_csv(SUMMARY)
    assert summary is not None
    adversarial = summary[(summary["level"] == "family") & (summary["family"] == "adversarial")]
    assert adversarial[MASKING_COLUMNS].notna().all().all()  # measured by the real sweep
    assert (adversarial["gradient_zero_fraction"] == 0).all()
    assert (adversarial[adversarial["variant"] == NORMAL]["logit_scale_ratio"] == 1).all()

    # The same parts, with the emphasized model's statistics those of a quantized model.
    model, _ = load_trained(tiny_run.run_dir)
    images, labels = test_images
    stats = gradient_statistics(
        {NORMAL: model, "emphasized": QuantizedInput(model)}, images, labels, ATTRIBUTES, 16
    )
    parts = read_parts(evaluated_run_dir, finished_job_ids(evaluated_run_dir))
    flagged = summarize_parts(
        parts, transforms={NORMAL: "identity", "emphasized": "topk"}, seed=3, gradients=stats
    )
    rows = flagged[(flagged["level"] == "family") & (flagged["family"] == Family.ADVERSARIAL)]
    emphasized = rows[rows["variant"] == "emphasized"]
    for column in ["sanity_nonzero_gradients", "sanity_all"]:
        assert emphasized[column].map(lambda value: value is False).all(), column
    assert set(unreliable(flagged)) == {"emphasized"}
    text = verdict(flagged)
    assert "Unreliable under attacks: emphasized: nonzero_gradients (background)" in text
    assert "(unreliable under attacks)" in text
    assert ("Unreliable under attacks" in verdict(summary)) == bool(unreliable(summary))
    # Every other column is untouched by the gradients.
    unflagged = summarize_parts(
        parts, transforms={NORMAL: "identity", "emphasized": "topk"}, seed=3
    )
    kept = [c for c in flagged.columns if c not in MASKING_COLUMNS and not c.startswith("sanity_")]
    pd.testing.assert_frame_equal(flagged[kept], unflagged[kept])
