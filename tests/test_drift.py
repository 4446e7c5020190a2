"""Attention drift (`robustness.drift`): the maths on known masks, a real AttentionNet and its
emphasized view, batching, and `drift.csv` of a tiny evaluated run."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from iamt.config import ModelConfig
from iamt.data.shapes import SHAPES_ATTRIBUTES
from iamt.model import Architecture, AttentionOutput, build_model
from iamt.rundir import DRIFT_COLUMNS, LEGACY_PART_COLUMNS, PART_COLUMNS
from iamt.transforms import parse_transform
from robustness import results
from robustness.drift import (
    DriftAccumulator,
    mask_cosine,
    mask_drift,
    predict_with_drift,
    rank_correlation,
)
from robustness.jobs import predict_all

IMAGES = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # (N, 3, H, W)
NOISY = (
    IMAGES + 0.2 * torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
).clamp(0, 1)


def _model() -> nn.Module:
    config = ModelConfig.model_validate(
        {"widths": [8, 16], "attention_hidden": 8, "head_channels": 8}
    )
    architecture = Architecture.from_config(
        config, SHAPES_ATTRIBUTES, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    )
    torch.manual_seed(0)
    return build_model(architecture).eval()


class ImageMasks(nn.Module):
    """A stand-in model whose masks are known: M_a(x) = x (C = 3 channels, h × w = H × W) for
    both of its two attributes; constant logits."""

    def forward(self, images: Tensor, *, return_masks: bool = False) -> AttentionOutput:
        logits = [torch.zeros(len(images), 2), torch.zeros(len(images), 3)]
        return AttentionOutput(logits=logits, masks=[images, images] if return_masks else None)


# --- the maths ------------------------------------------------------------------------------


def test_mask_cosine_of_known_masks() -> None:
    ones = torch.ones(2, 4, 3, 3)  # (B, C, h, w): 36 elements per image
    half = ones.clone()
    half[:, :2] = 0  # 18 of the 36 elements closed
    torch.testing.assert_close(mask_cosine(ones, ones), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(mask_cosine(ones, 3 * ones), torch.ones(2, dtype=torch.float64))
    # cos(1_36, 1_18) = 18 / (6 · √18) = √(1/2)
    expected = torch.full((2,), math.sqrt(0.5), dtype=torch.float64)
    torch.testing.assert_close(mask_cosine(ones, half), expected)
    torch.testing.assert_close(mask_cosine(half, 1 - half), torch.zeros(2, dtype=torch.float64))
    zero = torch.zeros(2, 4, 3, 3)
    assert mask_cosine(zero, zero).tolist() == [1.0, 1.0]  # two closed masks are identical
    assert mask_cosine(zero, ones).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="mask shapes differ"):
        mask_cosine(ones, ones[:, :2])


def test_rank_correlation_is_spearman_with_average_ranks() -> None:
    scores = np.array([0.1, 0.5, 0.3, 0.9])
    assert rank_correlation(scores, scores) == pytest.approx(1.0)
    assert rank_correlation(scores, 2 * scores + 1) == pytest.approx(1.0)  # ranks only
    assert rank_correlation(scores, -scores) == pytest.approx(-1.0)
    # Ties: [1, 2, 2, 3] has average ranks [1, 2.5, 2.5, 4]; against ranks [1, 2, 3, 4],
    # Pearson of the ranks = 4.5 / √(4.5 · 5) = 0.9486…
    tied = rank_correlation(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert tied == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    assert math.isnan(rank_correlation(np.ones(4), scores))  # no ranking to compare
    assert math.isnan(rank_correlation(scores[:1], scores[:1]))


def test_a_known_perturbation_gives_the_expected_drift() -> None:
    # Masks = the images themselves. The perturbation reverses the channel order, so the
    # importance ranking is exactly reversed (ρ = −1) and each image's cosine is known.
    clean = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(3)) + 0.01
    clean[:, 0] += 1.0  # channel importance strictly decreasing...
    clean[:, 2] *= 0.1  # ...0 > 1 > 2
    perturbed = clean.flip(1)
    c, p = clean.reshape(5, -1).double(), perturbed.reshape(5, -1).double()
    expected = float(((c * p).sum(1) / (c.norm(dim=1) * p.norm(dim=1))).mean())
    predictions, drift = predict_with_drift(ImageMasks(), clean, perturbed, batch_size=2)
    assert drift.n == 5 and len(drift.mask_cosine) == len(drift.importance_rank_correlation) == 2
    assert drift.mask_cosine == pytest.approx((expected, expected), rel=1e-12)
    assert drift.importance_rank_correlation == pytest.approx((-1.0, -1.0))
    assert predictions.shape == (5, 2) and predictions.dtype == torch.int64
    # The first attribute only: the other is NaN.
    only = mask_drift(ImageMasks(), clean, perturbed, batch_size=5, attributes=[0])
    assert only.at(0) == pytest.approx((expected, -1.0), rel=1e-12)
    assert all(math.isnan(v) for v in only.at(1))


def test_the_accumulator_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="out of range"):
        DriftAccumulator(2, attributes=[2])
    accumulator = DriftAccumulator(2)
    with pytest.raises(ValueError, match="expected 2 masks"):
        accumulator.update([torch.ones(1, 1, 1, 1)], [torch.ones(1, 1, 1, 1)])
    assert all(math.isnan(v) for v in accumulator.result().mask_cosine)  # nothing seen yet
    with pytest.raises(ValueError, match="differ in shape"):
        mask_drift(ImageMasks(), IMAGES, IMAGES[:2], batch_size=4)


# --- a real AttentionNet ----------------------------------------------------------------------


def test_identical_inputs_give_cosine_one_and_rank_correlation_one() -> None:
    model = _model()
    drift = mask_drift(model, IMAGES, IMAGES.clone(), batch_size=8)
    assert drift.n == 8 and len(drift.mask_cosine) == len(SHAPES_ATTRIBUTES)
    assert drift.mask_cosine == pytest.approx([1.0] * len(SHAPES_ATTRIBUTES), abs=1e-9)
    assert drift.importance_rank_correlation == pytest.approx([1.0] * len(SHAPES_ATTRIBUTES))


def test_drift_is_batched_and_predictions_match_predict_all() -> None:
    model = _model()
    predictions, whole = predict_with_drift(model, IMAGES, NOISY, batch_size=8)
    _, batched = predict_with_drift(model, IMAGES, NOISY, batch_size=3)
    assert whole.n == batched.n == 8
    assert batched.mask_cosine == pytest.approx(whole.mask_cosine, abs=1e-6)
    assert batched.importance_rank_correlation == pytest.approx(
        whole.importance_rank_correlation, abs=1e-6
    )
    assert all(0.0 < c < 1.0 for c in whole.mask_cosine)  # noise moves the masks
    assert torch.equal(predictions, predict_all(model, NOISY, 8))  # one pass, same answers


def test_drift_uses_the_masks_after_the_variants_transform() -> None:
    model = _model()
    importance = torch.rand(len(SHAPES_ATTRIBUTES), model.num_channels)
    emphasized = model.with_transform(parse_transform("topk:k=4,alpha=3"), importance).eval()
    drift = mask_drift(emphasized, IMAGES, NOISY, batch_size=8)
    with torch.no_grad():
        clean, noisy = emphasized(IMAGES, return_masks=True), emphasized(NOISY, return_masks=True)
    assert clean.masks is not None and noisy.masks is not None
    for a in range(len(SHAPES_ATTRIBUTES)):
        expected = float(mask_cosine(clean.masks[a], noisy.masks[a]).mean())
        assert drift.mask_cosine[a] == pytest.approx(expected, abs=1e-9)
        importance_clean = clean.masks[a].double().mean(dim=(0, 2, 3)).numpy()
        importance_noisy = noisy.masks[a].double().mean(dim=(0, 2, 3)).numpy()
        assert drift.importance_rank_correlation[a] == pytest.approx(
            rank_correlation(importance_clean, importance_noisy)
        )
    assert drift.mask_cosine != mask_drift(model, IMAGES, NOISY, batch_size=8).mask_cosine


def test_the_models_mode_is_restored() -> None:
    model = _model().train()
    before = [buffer.clone() for buffer in model.buffers()]
    mask_drift(model, IMAGES, NOISY, batch_size=4)
    assert model.training  # put back
    # It ran in eval mode: batch-norm running statistics were not touched.
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))


# --- drift.csv of a sweep -------------------------------------------------------------------


def test_drift_csv_has_one_row_per_perturbed_row(evaluated_run_dir: Path) -> None:
    drift = pd.read_csv(evaluated_run_dir / "drift.csv", dtype={"job_id": str})
    table = pd.read_csv(evaluated_run_dir / "results.csv", dtype={"job_id": str})
    assert list(drift.columns) == DRIFT_COLUMNS
    # Noise, corruption and fixed-ε white-box rows; not clean, transfer or minimisation rows.
    fixed = ~table["perturbation"].isin(["l2_deepfool", "boundary"])
    expected = table[
        table["family"].isin(["noise", "corruption"]) | ((table["family"] == "adversarial") & fixed)
    ]
    key = ["job_id", "variant", "attribute"]
    assert len(drift) == len(expected) == len(drift.drop_duplicates(key))
    merged = drift.merge(expected, on=key, suffixes=("", "_results"), validate="one_to_one")
    assert len(merged) == len(drift)
    assert (merged["n"] == merged["n_results"]).all()
    strength = merged["severity"].where(merged["family"] == "corruption", merged["epsilon"])
    assert np.allclose(merged["strength"], strength)
    assert drift["mask_cosine"].between(0.0, 1.0 + 1e-9).all()
    correlation = drift["importance_rank_correlation"].dropna()
    assert correlation.between(-1.0, 1.0).all() and len(correlation) > 0.9 * len(drift)
    assert set(drift["family"]) == {"noise", "corruption", "adversarial"}
    order = drift.sort_values(
        ["family", "perturbation", "strength", "attribute", "variant", "job_id"], kind="mergesort"
    )
    assert order.index.tolist() == drift.index.tolist()  # deterministic order
    # Clean and transfer rows keep their part columns, but empty.
    parts = results.read_parts(evaluated_run_dir, results.finished_job_ids(evaluated_run_dir))
    undrifted = parts[parts["family"].isin(["clean", "transfer"])]
    assert len(undrifted) and undrifted["mask_cosine"].isna().all()


def test_part_files_without_drift_columns_are_still_read(
    evaluated_run_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(evaluated_run_dir / "parts", run_dir / "parts")
    paths = sorted((run_dir / "parts").glob("*.csv"))
    for path in paths[:3]:  # three parts as an older version wrote them
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame[LEGACY_PART_COLUMNS].to_csv(path, index=False, lineterminator="\n")
    variants, attributes = {"normal", "emphasized"}, {"shape", "colour", "size", "background"}
    assert all(results.part_problem(path, variants, attributes) is None for path in paths)
    ids = [path.stem for path in paths]
    current = results.read_parts(evaluated_run_dir, ids)
    mixed = results.read_parts(run_dir, ids)
    assert list(mixed.columns) == PART_COLUMNS and len(mixed) == len(current)
    legacy = mixed["job_id"].isin(ids[:3])
    assert mixed.loc[legacy, "mask_cosine"].isna().all()
    same: dict[str, Any] = {"check_dtype": False}
    pd.testing.assert_frame_equal(mixed.loc[~legacy], current.loc[~legacy], **same)
    drift_columns = ["mask_cosine", "importance_rank_correlation", "drift_n"]
    pd.testing.assert_frame_equal(
        mixed.drop(columns=drift_columns), current.drop(columns=drift_columns), **same
    )


def test_drift_samples_measures_the_first_images_only_and_predicts_them_all() -> None:
    model = _model()
    predictions, first_three = predict_with_drift(
        model, IMAGES, NOISY, batch_size=2, drift_samples=3
    )
    _, reference = predict_with_drift(model, IMAGES[:3], NOISY[:3], batch_size=8)
    assert first_three.n == 3
    assert first_three.mask_cosine == pytest.approx(reference.mask_cosine, abs=1e-9)
    assert torch.equal(predictions, predict_all(model, NOISY, 8))  # all 8 classified
    with pytest.raises(ValueError, match="drift_samples"):
        predict_with_drift(model, IMAGES, NOISY, batch_size=2, drift_samples=0)
