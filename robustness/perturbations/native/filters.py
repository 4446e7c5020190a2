"""Separable filters as small matrices, shared by the native corruptions.

A 1-D correlation with odd taps along an axis of `side` pixels, borders included, is a
(side, side) matrix M: filtered = M @ x. A separable filter of (…, H, W) images is then
M_H @ images @ M_Wᵀ: two small matrix products, faster on the CPU than a depthwise convolution
at these sizes, and exact at the borders. Matrices are built once per (σ, side, border) in
float64 and cached in float32 on the device.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


class Border(StrEnum):
    NEAREST = "nearest"  # edge pixel repeated: scipy `nearest`, OpenCV BORDER_REPLICATE
    REFLECT101 = "reflect101"  # mirror about the edge pixel: OpenCV's default, torch `reflect`
    REFLECT = "reflect"  # mirror about the edge itself (d c b a | a b c d): scipy `reflect`


def border_index(index: Tensor, side: int, border: Border) -> Tensor:
    """Fold integer positions outside [0, side) back in by `border`, as often as needed."""
    if border is Border.NEAREST or side == 1:
        return index.clamp(0, side - 1)
    if border is Border.REFLECT101:
        period = 2 * (side - 1)
        folded = index.remainder(period)
        return torch.where(folded < side, folded, period - folded)
    period = 2 * side
    folded = index.remainder(period)
    return torch.where(folded < side, folded, period - 1 - folded)


def filter_matrix(taps: Tensor, side: int, border: Border) -> Tensor:
    """(side, side) float64 M of the correlation with the odd `taps` (K,) and `border`:
    filtered[o] = Σ_t taps[t] · x[border(o + t − K // 2)] = (M @ x)[o]."""
    radius = taps.shape[0] // 2
    outputs = torch.arange(side)[:, None]  # (side, 1)
    offsets = torch.arange(-radius, radius + 1)[None, :]  # (1, K)
    sources = border_index(outputs + offsets, side, border)  # (side, K)
    matrix = torch.zeros(side, side, dtype=torch.float64)
    matrix.scatter_add_(1, sources, taps.to(torch.float64)[None, :].expand(side, -1))
    return matrix


def gaussian_taps(sigma: float, truncate: float) -> Tensor:
    """scipy.ndimage's `_gaussian_kernel1d`: (2r + 1,) float64, r = int(truncate·σ + 0.5)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / float(sigma) ** 2 * x**2)
    return phi / phi.sum()


@lru_cache(maxsize=128)
def gaussian_matrix(
    sigma: float, side: int, border: Border, truncate: float, device: torch.device
) -> Tensor:
    """(side, side) float32: scipy's `gaussian_filter1d` along one axis of `side` pixels."""
    matrix = filter_matrix(gaussian_taps(sigma, truncate), side, border)
    return matrix.to(torch.float32).to(device)


def gaussian_filter(
    field: Tensor,
    sigma: float | tuple[float, float],
    border: Border = Border.NEAREST,
    truncate: float = 4.0,
) -> Tensor:
    """`scipy.ndimage.gaussian_filter` over the last two axes of `field` (…, H, W), σ one
    number or (σ_H, σ_W); the defaults are skimage.filters.gaussian's."""
    sigma_rows, sigma_columns = sigma if isinstance(sigma, tuple) else (sigma, sigma)
    height, width = field.shape[-2:]
    rows = gaussian_matrix(float(sigma_rows), height, border, truncate, field.device)  # (H, H)
    columns = gaussian_matrix(float(sigma_columns), width, border, truncate, field.device)
    return rows @ field @ columns.T


def shifted_sum(
    layers: Tensor,
    weights: Tensor,
    up: Tensor,
    right: Tensor,
    max_up: int,
    max_right: int,
    out_rows: int | None = None,
) -> Tensor:
    """Σ_i weights[n, i] · layers[b, n, clamp(y − up[n, i]), clamp(x + right[n, i])] for layers
    (B, N, h, w) (the B planes of layer n share its taps), weights, up and right (N, T), with
    0 ≤ up ≤ max_up and 0 ≤ right ≤ max_right: the first `out_rows` rows (all by default) of
    the result (B, N, out_rows, w). Edge pixels repeat (the reference's motion blurs).

    One depthwise convolution with a per-layer (max_up + 1, max_right + 1) kernel holding the
    taps at their shifts: a shift-and-add per tap moves several times the data."""
    count, height = layers.shape[1:3]
    rows = height if out_rows is None else out_rows
    kernel = torch.zeros(count, max_up + 1, max_right + 1, device=layers.device)
    layer_index = torch.arange(count, device=layers.device)[:, None].expand_as(up)
    # conv2d correlates: output (y, x) reads padded (y + a, x + b), i.e. layer (y + a − max_up,
    # x + b), so tap (up, right) sits at a = max_up − up, b = right.
    kernel.index_put_((layer_index, max_up - up, right), weights, accumulate=True)
    # Shifts only reach upwards: the first `rows` output rows read only the rows above them.
    padded = _replicate_top_right(layers[:, :, :rows], max_up, max_right)  # (B, N, h', w')
    return F.conv2d(padded, kernel[:, None], groups=count)  # (B, N, rows, w)


def _replicate_top_right(layers: Tensor, top: int, right: int) -> Tensor:
    """`F.pad(layers, (0, right, top, 0), mode="replicate")` for (B, N, h, w) layers, as three
    block copies (about three times faster on the CPU than the padding kernel here)."""
    batch, count, height, width = layers.shape
    padded = layers.new_empty(batch, count, height + top, width + right)
    padded[:, :, top:, :width] = layers
    padded[:, :, top:, width:] = layers[:, :, :, width - 1 :].expand(-1, -1, -1, right)
    padded[:, :, :top] = padded[:, :, top : top + 1].expand(-1, -1, top, -1)
    return padded
