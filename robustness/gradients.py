"""Gradient-masking statistics per variant and attribute, the raw numbers behind the masking
flags of summary.csv (robustness/sanity.py `masking_flags`).

An emphasized model rescales features inside the network. That changes its logit scale, and a
rescaled or saturated model is exactly where gradient attacks can look stronger or weaker than
they are (Athalye et al. 2018, *Obfuscated Gradients Give a False Sense of Security*; Croce &
Hein 2020, AutoAttack, whose flags these follow). Two numbers are measured on clean test images:

- the fraction of samples whose input gradient is exactly zero, and the fraction where it holds a
  NaN or an infinity. The gradient is that of the margin loss max_{j≠y} z_j − z_y (Carlini &
  Wagner 2017), not of the cross-entropy: the cross-entropy's gradient underflows to 0 on a
  confidently correct sample in float32, which would flag a healthy model;
- the logit scale: the median over samples of ‖z − mean(z)‖₂, the spread of one attribute's
  logits. summary.csv divides a variant's by the normal model's.

It runs once per sweep in the driver, on one thread, so the numbers do not depend on the machine.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor, nn

from iamt.rundir import GRADIENT_STATISTICS_COLUMNS
from robustness.limits import single_thread

__all__ = ["gradient_statistics"]


def _margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,) max_{j≠y} z_j − z_y: positive where the sample is misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.max(dim=1).values - true


def _attribute_statistics(
    model: nn.Module, images: Tensor, labels: Tensor, attribute: int, batch_size: int
) -> dict[str, float | int]:
    zero = nonfinite = 0
    scales: list[Tensor] = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].clone().requires_grad_(True)
        logits = model(x).logits[attribute]  # (B, K)
        # The samples are independent (eval mode), so one backward of the sum gives each
        # sample's own gradient.
        (gradient,) = torch.autograd.grad(
            _margin_loss(logits, labels[start : start + batch_size, attribute]).sum(), x
        )
        flat = gradient.flatten(1)  # (B, 3·H·W)
        finite = torch.isfinite(flat).all(dim=1)
        nonfinite += int((~finite).sum())
        zero += int((finite & (flat == 0).all(dim=1)).sum())
        centred = logits.detach() - logits.detach().mean(dim=1, keepdim=True)
        scales.append(centred.norm(dim=1))
    n = len(images)
    return {
        "n": n,
        "gradient_zero_fraction": zero / n,
        "gradient_nonfinite_fraction": nonfinite / n,
        "logit_scale": float(torch.cat(scales).median()),
    }


def gradient_statistics(
    models: Mapping[str, nn.Module],
    images: Tensor,
    labels: Tensor,
    attribute_names: list[str],
    batch_size: int,
) -> pd.DataFrame:
    """One row per variant × attribute (GRADIENT_STATISTICS_COLUMNS) on `images` (N, 3, H, W)
    in [0, 1] with `labels` (N, A)."""
    rows = []
    with single_thread():  # the same logit scale on every machine
        for variant, model in models.items():
            model.eval()
            for attribute, name in enumerate(attribute_names):
                rows.append(
                    {
                        "variant": variant,
                        "attribute": name,
                        **_attribute_statistics(model, images, labels, attribute, batch_size),
                    }
                )
    return pd.DataFrame(rows, columns=GRADIENT_STATISTICS_COLUMNS)
