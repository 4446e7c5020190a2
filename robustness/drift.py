"""Attention drift: how far a perturbation moves a model's attention masks.

For one model (a variant: the normal AttentionNet or an EmphasizedAttentionNet), a set of clean
images x_i and their perturbed versions x̃_i (noise, a corruption, an adversarial), and every
attribute a, with M_a(x) the (C, h, w) mask of attribute a *after the variant's transform T*:

- `mask_cosine[a]` = mean_i cos(vec M_a(x_i), vec M_a(x̃_i)): 1 when the perturbation leaves
  every mask where it was, lower the more the masks move (masks are ≥ 0, so it stays in [0, 1]);
- `importance_rank_correlation[a]` = Spearman ρ between the channel importance on the clean
  images, I_a[c] = mean over i and positions of M_a(x_i)[c], and the same on the perturbed
  images (shape (C,) each; ties get average ranks): 1 when the perturbation keeps the
  ranking of the channels, which is what the topk/suppress transforms act on.

Everything is accumulated batch by batch (cosine sums, importance sums), so memory is bounded by
one batch of masks, never the whole set. Pure: torch and scipy, no Ray, no files.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from iamt.model import predicted_classes
from iamt.variants import SharedVariants


@dataclass(frozen=True)
class MaskDrift:
    """Drift of one model's masks, per attribute (NaN for an attribute not measured)."""

    mask_cosine: tuple[float, ...]  # (A,)
    importance_rank_correlation: tuple[float, ...]  # (A,)
    n: int  # images compared

    def at(self, attribute: int) -> tuple[float, float]:
        """(mask_cosine, importance_rank_correlation) of one attribute."""
        return self.mask_cosine[attribute], self.importance_rank_correlation[attribute]


def mask_cosine(clean: Tensor, perturbed: Tensor) -> Tensor:
    """Per-image cosine similarity of two batches of masks (B, C, h, w) -> (B,), in float64.

    Two all-zero masks are identical (1.0); an all-zero mask against a non-zero one gives 0.0
    (binarize can close every gate)."""
    if clean.shape != perturbed.shape:
        raise ValueError(f"mask shapes differ: {tuple(clean.shape)} vs {tuple(perturbed.shape)}")
    c = clean.reshape(len(clean), -1).double()  # (B, C·h·w)
    p = perturbed.reshape(len(perturbed), -1).double()  # (B, C·h·w)
    dot = (c * p).sum(dim=1)  # (B,)
    clean_norm, perturbed_norm = c.norm(dim=1), p.norm(dim=1)  # (B,) each; 0 only if all zero
    both_zero = (clean_norm == 0) & (perturbed_norm == 0)
    cosine = dot / (clean_norm * perturbed_norm).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(both_zero, torch.ones_like(cosine), cosine)


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman ρ of two score vectors (C,), average ranks for ties; NaN where it is undefined
    (fewer than two channels, or a constant vector: no ranking to compare)."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two vectors of one length, got {a.shape} and {b.shape}")
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


class DriftAccumulator:
    """Sums over batches: Σ_i cos_i per attribute (A,), and Σ over images and positions of the
    clean and perturbed masks (A, C). `update` with each batch's masks, `result` at the end."""

    def __init__(self, num_attributes: int, attributes: Sequence[int] | None = None) -> None:
        self.num_attributes = num_attributes
        self.attributes = list(range(num_attributes)) if attributes is None else list(attributes)
        for a in self.attributes:
            if not 0 <= a < num_attributes:
                raise ValueError(f"attribute index {a} is out of range 0..{num_attributes - 1}")
        self.n = 0
        self.cosine_sum: dict[int, float] = dict.fromkeys(self.attributes, 0.0)
        self.clean_sum: dict[int, Tensor] = {}  # a -> (C,) float64
        self.perturbed_sum: dict[int, Tensor] = {}  # a -> (C,) float64

    def update(self, clean_masks: Sequence[Tensor], perturbed_masks: Sequence[Tensor]) -> None:
        """One batch: one (B, C, h, w) tensor per attribute for the clean and perturbed images."""
        if len(clean_masks) != self.num_attributes or len(perturbed_masks) != self.num_attributes:
            raise ValueError(
                f"expected {self.num_attributes} masks per batch, got {len(clean_masks)} "
                f"and {len(perturbed_masks)}"
            )
        batch = len(clean_masks[0])
        for a in self.attributes:
            # (B, C, h, w) each, in float64 once: the cosine and the channel sums share it.
            clean, perturbed = clean_masks[a].double(), perturbed_masks[a].double()
            self.cosine_sum[a] += float(mask_cosine(clean, perturbed).sum())
            clean_channels = clean.sum(dim=(0, 2, 3)).cpu()  # (C,)
            perturbed_channels = perturbed.sum(dim=(0, 2, 3)).cpu()  # (C,)
            if a in self.clean_sum:
                self.clean_sum[a] += clean_channels
                self.perturbed_sum[a] += perturbed_channels
            else:
                self.clean_sum[a], self.perturbed_sum[a] = clean_channels, perturbed_channels
        self.n += batch

    def result(self) -> MaskDrift:
        cosine = [math.nan] * self.num_attributes
        rho = [math.nan] * self.num_attributes
        if self.n:
            for a in self.attributes:
                cosine[a] = self.cosine_sum[a] / self.n
                # Ranks of the sums equal ranks of the means (same positive divisor).
                rho[a] = rank_correlation(self.clean_sum[a].numpy(), self.perturbed_sum[a].numpy())
        return MaskDrift(tuple(cosine), tuple(rho), self.n)


def _masks(output_masks: list[Tensor] | None) -> list[Tensor]:
    if output_masks is None:
        raise TypeError("the model returned no masks: it must accept return_masks=True")
    return output_masks


def predict_with_drift(
    model: nn.Module,
    clean: Tensor,
    perturbed: Tensor,
    batch_size: int,
    *,
    attributes: Sequence[int] | None = None,
    drift_samples: int | None = None,
) -> tuple[Tensor, MaskDrift]:
    """(N, A) predicted class per attribute on `perturbed` (on the CPU, as
    `robustness.jobs.predict_all` gives them) and the mask drift from `clean` to `perturbed`.

    `clean`, `perturbed`: (N, 3, H, W) on the model's device, image i of one the perturbed
    version of image i of the other. One forward per batch of each: the perturbed pass gives
    the logits and the masks at once. The model runs in eval mode under no_grad; its mode is
    restored afterwards. `attributes`: indices to measure (default all; others are NaN).
    `drift_samples`: measure the drift on the first this many images only (default all): the
    clean pass then costs that many images, not the whole shard."""
    (result,) = predict_variants_with_drift(
        SharedVariants({"model": model}),
        clean,
        perturbed,
        batch_size,
        attributes=attributes,
        drift_samples=drift_samples,
    ).values()
    return result


def _drift_limit(
    clean: Tensor, perturbed: Tensor, batch_size: int, drift_samples: int | None
) -> int:
    """How many leading images the drift is measured on; refuses inconsistent arguments."""
    if clean.shape != perturbed.shape:
        raise ValueError(
            f"clean and perturbed images differ in shape: {tuple(clean.shape)} vs "
            f"{tuple(perturbed.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    limit = len(clean) if drift_samples is None else min(drift_samples, len(clean))
    if limit < 1:
        raise ValueError(f"drift_samples must be at least 1, got {drift_samples}")
    return limit


def predict_variants_with_drift(
    variants: SharedVariants,
    clean: Tensor,
    perturbed: Tensor,
    batch_size: int,
    *,
    attributes: Sequence[int] | None = None,
    drift_samples: int | None = None,
) -> dict[str, tuple[Tensor, MaskDrift]]:
    """`predict_with_drift` of every variant, in one pass over the batches: when the
    variants share a trunk, each batch of `perturbed` (and of the first `drift_samples` of
    `clean`) runs the trunk and attention once for all of them, and the clean pass runs no
    heads. The numbers equal those of `predict_with_drift` on each variant alone."""
    limit = _drift_limit(clean, perturbed, batch_size, drift_samples)
    predictions: dict[str, list[Tensor]] = {name: [] for name in variants.names}
    accumulators: dict[str, DriftAccumulator] = {}
    with variants.evaluating(), torch.no_grad():
        for start in range(0, len(clean), batch_size):
            stop = start + batch_size
            measured = min(stop, limit) - start  # images of this batch that count
            outputs = variants.outputs(perturbed[start:stop], return_masks=True)
            clean_masks = (
                variants.masks(clean[start : start + measured])
                if measured > 0
                else repeat((None, None))
            )
            # Both lazy and in the variants' order: one variant's masks alive at a time.
            for (name, output), (_, masks) in zip(outputs, clean_masks, strict=False):
                perturbed_masks = _masks(output.masks)  # A × (B, C, h, w)
                if name not in accumulators:
                    accumulators[name] = DriftAccumulator(len(perturbed_masks), attributes)
                if measured > 0:
                    accumulators[name].update(
                        _masks(masks), [m[:measured] for m in perturbed_masks]
                    )
                predictions[name].append(predicted_classes(output.logits))
    return {
        name: (torch.cat(predictions[name]), accumulators[name].result()) for name in variants.names
    }


def mask_drift(
    model: nn.Module,
    clean: Tensor,
    perturbed: Tensor,
    batch_size: int,
    *,
    attributes: Sequence[int] | None = None,
    drift_samples: int | None = None,
) -> MaskDrift:
    """The mask drift of `model` from `clean` (N, 3, H, W) to `perturbed` (N, 3, H, W):
    per-attribute mean mask cosine and importance rank correlation (see the module docstring)."""
    _, drift = predict_with_drift(
        model, clean, perturbed, batch_size, attributes=attributes, drift_samples=drift_samples
    )
    return drift


__all__ = [
    "DriftAccumulator",
    "MaskDrift",
    "mask_cosine",
    "mask_drift",
    "predict_variants_with_drift",
    "predict_with_drift",
    "rank_correlation",
]
