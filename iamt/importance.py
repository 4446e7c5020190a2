"""Which feature channels matter for each attribute, and where the attention falls.

Channel importance I[a, c] ranks channels per attribute; the emphasized transforms (topk,
suppress) act on that ranking. Two scores:

- `mean_mask`: mean of M_a[c] over samples and positions (how open channel c's gate is);
- `gradient`: mean of M_a[c] · |∂ logit_true / ∂ F'_a[c]| (how much the open gate matters).

The localisation ratio checks the masks are not noise: mean mask activation inside the object
(its pixel mask, area-downsampled to the feature grid) ÷ mean activation outside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from iamt.config import ImportanceMethod
from iamt.data.base import AttributeDataset, TensorAttributeDataset, iterate_batches
from iamt.model import AttentionNet
from iamt.rundir import IMPORTANCE_COLUMNS


def channel_importance(
    model: AttentionNet,
    dataset: AttributeDataset,
    *,
    method: ImportanceMethod = ImportanceMethod.MEAN_MASK,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> Tensor:
    """I (A, C): importance of every channel for every attribute, averaged over `dataset`."""
    device = device or next(model.parameters()).device
    model.eval()
    total = torch.zeros(model.num_attributes, model.num_channels, dtype=torch.float64)
    count = 0
    for images, labels in iterate_batches(dataset, batch_size):
        images, labels = images.to(device), labels.to(device)
        if method is ImportanceMethod.MEAN_MASK:
            with torch.no_grad():
                masks = model(images, return_masks=True).masks
            assert masks is not None
            scores = [m.mean(dim=(2, 3)) for m in masks]  # each (B, C)
        else:
            output = model(images, return_masks=True, return_attended=True)
            assert output.masks is not None and output.attended is not None
            true_logits = sum(
                logits.gather(1, labels[:, a : a + 1]).sum()
                for a, logits in enumerate(output.logits)
            )
            # logit_a depends on F'_a only through head_a, so one backward gives every ∂/∂F'_a.
            grads = torch.autograd.grad(true_logits, output.attended)
            scores = [
                (m.detach() * g.abs()).mean(dim=(2, 3))
                for m, g in zip(output.masks, grads, strict=True)
            ]
        total += torch.stack(scores, dim=1).sum(dim=0).double().cpu()  # (A, C)
        count += images.shape[0]
    return (total / count).float()


def importance_table(importance: Tensor, attribute_names: Sequence[str]) -> pd.DataFrame:
    """Long format: attribute, channel, score, rank (1 = most important; ties by channel)."""
    rows = []
    for a, name in enumerate(attribute_names):
        order = torch.argsort(importance[a], descending=True, stable=True).tolist()
        rank = {channel: position + 1 for position, channel in enumerate(order)}
        rows += [
            {"attribute": name, "channel": c, "score": float(importance[a, c]), "rank": rank[c]}
            for c in range(importance.shape[1])
        ]
    return pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)


def importance_from_table(table: pd.DataFrame, attribute_names: Sequence[str]) -> Tensor:
    """Inverse of `importance_table`: (A, C) scores in the model's attribute order."""
    pivot = table.pivot(index="attribute", columns="channel", values="score")
    return torch.tensor(pivot.loc[list(attribute_names)].to_numpy(), dtype=torch.float32)


def localisation_ratio(
    model: torch.nn.Module,
    dataset: TensorAttributeDataset,
    *,
    batch_size: int = 256,
) -> dict[str, float]:
    """Per attribute: mean mask activation inside the object ÷ outside it (> 1 = on object)."""
    if dataset.object_masks is None:
        raise ValueError("localisation_ratio needs a dataset that provides object masks")
    device = next(model.parameters()).device
    names = [spec.name for spec in dataset.attributes]
    inside = torch.zeros(len(names), dtype=torch.float64)
    outside = torch.zeros(len(names), dtype=torch.float64)
    weight_in = weight_out = 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            images = dataset.images[start : start + batch_size].to(device)
            objects = dataset.object_masks[start : start + batch_size].to(device).float()
            masks = model(images, return_masks=True).masks
            assert masks is not None
            grid = masks[0].shape[-2:]
            # Fraction of each feature cell covered by the object: (B, 1, h, w) in [0, 1].
            cover = F.adaptive_avg_pool2d(objects, grid)
            weight_in += float(cover.sum()) * masks[0].shape[1]
            weight_out += float((1 - cover).sum()) * masks[0].shape[1]
            for a, mask in enumerate(masks):  # mask (B, C, h, w)
                inside[a] += float((mask * cover).sum())
                outside[a] += float((mask * (1 - cover)).sum())
    return {
        name: float((inside[a] / weight_in) / (outside[a] / weight_out))
        for a, name in enumerate(names)
    }
