"""Native ImageNet-C noise corruptions: gaussian_noise, shot_noise, impulse_noise, speckle_noise
and spatter at severities 1..5 (see registry.py for the contract). Not to be confused with the
continuous-strength noise family (`robustness/perturbations/noise.py`: gaussian, shot, ...).

All five are random (`Fidelity.RANDOM`): they draw their noise from the job's generator, so they
are held to the reference by the statistics of the change they make, not pixel by pixel.

- `gaussian_noise`: x + N(0, c²) per pixel and channel, clipped to [0, 1].
- `shot_noise`: Poisson(x·c) / c per pixel and channel (photon counting), clipped. The Poisson
  draw is sampled by Walker's alias method from a table per uint8 level (the input is on the
  uint8 grid, so x·c takes 256 values), one random integer per element: faster than
  `torch.poisson` on the CPU, and exact up to the table's 2^-23 quantisation (checked by χ²
  against the Poisson law).
- `impulse_noise`: salt & pepper as `skimage.util.random_noise(mode="s&p", amount=c)`: every
  element of the (H, W, 3) array (each channel on its own) is replaced with probability c, by 1
  or 0 with equal odds.
- `speckle_noise`: x + x·N(0, c²) per pixel and channel, clipped.
- `spatter`: a liquid layer (one per image, shared by the channels) of Gaussian noise, smoothed
  by a Gaussian filter (scipy's `nearest` border, truncated at 4 σ) and thresholded.
  Severities 1-3 ("water") shade the liquid through the reference's OpenCV chain, each step
  ported to torch and checked step by step against OpenCV on the same layers: Canny edges
  (3×3 Sobel, L1 magnitude, OpenCV's fixed-point non-maximum suppression, hysteresis), the
  5×5 chamfer L2 distance to the edges truncated at 20, a 3×3 box blur, histogram
  equalisation, a 3×3 emboss filter, another box blur; the shading times the layer is
  normalised by its maximum and adds pale turquoise. Severities 4-5 ("mud") blur the layer's
  mask again and paint mud brown where it stays above 0.8.

Deliberate differences from the reference:
- The random streams are torch's, not numpy's: the same seed gives different (but equally
  distributed) noise; the gate compares statistics.
- Everything runs in float32 (the reference mixes float64 and float32), so a value that lands
  within float rounding of a uint8 step may come out one level apart.
- Canny's hysteresis grows from the strong edges through the weak ones for a fixed number of
  steps (`_HYSTERESIS_STEPS`), not until it converges (that test would be a host round trip);
  in spatter's layer (0 or ~180 grey levels) the weak chains are a pixel or two long.
- Spatter's water mode divides by the layer's maximum; the reference divides 0 by 0 when an
  image draws no liquid at all (it happens on small images at severity 1), and `np.uint8(nan)`
  makes that image black. We return 0 for such an image on purpose, to give what the
  reference gives (and so the same statistics), rather than NaN.

Spatter is registered with `default=False`: its port is exact given the same liquid layer, but
the gate's statistic cannot tell that at severity 1. There a few images in every 256 draw no
liquid and turn black in the reference and here alike; how many is luck of the draw, and each
black image moves the change's mean by a large step, so two equally distributed runs differ by
more than 5 % (0.11 to 0.49 across seeds at 256 images; 0.152 at the gate's 1,024). Severities
2-5 pass at 1,024 images (worst 0.023).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from robustness.perturbations.native.filters import gaussian_filter
from robustness.perturbations.native.registry import Fidelity, register_native

# imagecorruptions.corruptions.gaussian_noise: the noise's standard deviation
GAUSSIAN_NOISE_SCALES: tuple[float, ...] = (0.08, 0.12, 0.18, 0.26, 0.38)
# imagecorruptions.corruptions.shot_noise: the photon count of a full-scale pixel
SHOT_NOISE_RATES: tuple[int, ...] = (60, 25, 12, 5, 3)
# imagecorruptions.corruptions.impulse_noise: the fraction of elements replaced
IMPULSE_NOISE_AMOUNTS: tuple[float, ...] = (0.03, 0.06, 0.09, 0.17, 0.27)
# imagecorruptions.corruptions.speckle_noise: the multiplicative noise's standard deviation
SPECKLE_NOISE_SCALES: tuple[float, ...] = (0.15, 0.2, 0.35, 0.45, 0.6)
# imagecorruptions.corruptions.spatter: (layer mean, layer std, layer blur σ, threshold,
# water: strength / mud: mask blur σ, mode 0 water / 1 mud)
SPATTER_PARAMETERS: tuple[tuple[float, float, float, float, float, int], ...] = (
    (0.65, 0.3, 4, 0.69, 0.6, 0),
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
)
# imagecorruptions.corruptions.spatter: the colours it paints, in the image's channel order
WATER_COLOUR: tuple[float, float, float] = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD_COLOUR: tuple[float, float, float] = (63 / 255, 42 / 255, 20 / 255)  # mud brown

# The alias sampler's coin is the low 23 bits of u·K; an int32 table entry packs its keep
# threshold (a 2^23 fraction) in the low 23 bits under the alias (< 256).
_COIN_BITS = 23
_COIN_MASK = (1 << _COIN_BITS) - 1
# cv2.Canny(layer, 50, 150) in spatter's water mode; OpenCV floors the thresholds.
_CANNY_LOW = 50
_CANNY_HIGH = 150
# OpenCV's Canny: tan(22.5°) in 15-bit fixed point, for the gradient direction's sector.
_CANNY_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _CANNY_SHIFT) + 0.5)
_HYSTERESIS_STEPS = 4
# cv2.distanceTransform(..., cv2.DIST_L2, 5): the 5×5 chamfer weights (axial, diagonal, knight),
# and spatter's cv2.threshold(dist, 20, 20, THRESH_TRUNC).
_AXIAL, _DIAGONAL, _KNIGHT = 1.0, 1.4, 2.1969
_DISTANCE_CAP = 20.0


@register_native("gaussian_noise", fidelity=Fidelity.RANDOM, default=True)
def gaussian_noise(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    scale = GAUSSIAN_NOISE_SCALES[severity - 1]
    noise = torch.randn(
        images.shape, generator=generator, device=images.device, dtype=images.dtype
    )  # (N, 3, H, W)
    return noise.mul_(scale).add_(images).clamp_(0, 1)


@register_native("shot_noise", fidelity=Fidelity.RANDOM, default=True)
def shot_noise(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    rate = SHOT_NOISE_RATES[severity - 1]
    table = _poisson_alias_table(rate, images.device)  # (256·K,) packed threshold and alias
    bucket_bits = (table.numel() // 256).bit_length() - 1  # K = 2^bits buckets per level
    # The level l (λ = rate·l/255) picks the row l·K of the table.
    index = images.mul(255 << bucket_bits).round_().to(torch.int32)  # (N, 3, H, W): l·K
    # One uniform draw of bits + 23 random bits (a power-of-two range: torch's randint reduces
    # its draws modulo the range, which another range would bias): the high bits pick the
    # bucket k, the low 23 are the coin that keeps k, else takes k's alias. int32 throughout.
    draw = torch.randint(
        0,
        1 << (_COIN_BITS + bucket_bits),
        images.shape,
        generator=generator,
        device=images.device,
        dtype=torch.int32,
    )
    bucket = draw >> _COIN_BITS  # (N, 3, H, W)
    entry = table.index_select(0, index.add_(bucket).flatten()).view_as(draw)
    keep = draw.bitwise_and_(_COIN_MASK) < (entry & _COIN_MASK)
    counts = torch.where(keep, bucket, entry.bitwise_right_shift_(_COIN_BITS))
    return counts.to(images.dtype).div_(rate).clamp_(max=1)


@register_native("impulse_noise", fidelity=Fidelity.RANDOM, default=True, on_grid=True)
def impulse_noise(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    amount = IMPULSE_NOISE_AMOUNTS[severity - 1]
    # skimage flips every element, channels included, with probability `amount`, and a
    # flipped one to 1 (salt) or 0 (pepper, its lower clip for images >= 0) with equal odds.
    # One uniform u per element gives both: flipped is u < amount, salt is u < amount / 2.
    draw = torch.rand(images.shape, generator=generator, device=images.device)  # (N, 3, H, W)
    return images.masked_fill(draw < amount, 0).masked_fill_(draw < amount / 2, 1)


@register_native("speckle_noise", fidelity=Fidelity.RANDOM, default=True)
def speckle_noise(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    scale = SPECKLE_NOISE_SCALES[severity - 1]
    noise = torch.randn(
        images.shape, generator=generator, device=images.device, dtype=images.dtype
    )  # (N, 3, H, W)
    return noise.mul_(images * scale).add_(images).clamp_(0, 1)


# Not default: the gate's statistic is luck at severity 1 (see the module docstring).
@register_native("spatter", fidelity=Fidelity.RANDOM, default=False)
def spatter(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    mean, std, layer_sigma, threshold, strength, mode = SPATTER_PARAMETERS[severity - 1]
    count, _, height, width = images.shape
    layer = torch.randn((count, height, width), generator=generator, device=images.device)
    layer = gaussian_filter(layer.mul_(std).add_(mean), layer_sigma)  # (N, H, W)
    layer = layer * (layer >= threshold)  # `layer[layer < threshold] = 0`
    if mode == 0:
        return _water(images, layer, strength)
    return _mud(images, layer, threshold, strength)


def _water(images: Tensor, layer: Tensor, strength: float) -> Tensor:
    """Spatter's water mode: images (N, 3, H, W), layer (N, H, W) thresholded liquid."""
    layer8 = torch.floor(layer * 255).clamp_(0, 255)  # (N, H, W): `.astype(np.uint8)`
    edges = _canny(layer8)  # (N, H, W) bool
    dist = _chamfer_distance(edges)  # (N, H, W) in [0, 20], truncated like the reference
    dist = torch.floor(_box3(dist))  # a float blur, then `.astype(np.uint8)` truncates
    dist = _equalize_hist(dist)
    dist = _emboss(dist).clamp_(0, 255)  # filter2D into CV_8U saturates (integer sums)
    dist = torch.round(_box3(dist))  # the blur of a uint8 image rounds back to uint8
    shade = layer8 * dist  # (N, H, W)
    peak = shade.amax(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    shade = (shade / peak.clamp_min(1) * strength).unsqueeze(1)  # (N, 1, H, W)
    colour = torch.tensor(WATER_COLOUR, device=images.device).view(1, 3, 1, 1)
    out = (images + shade * colour).clamp_(0, 1)  # (N, 3, H, W)
    # The reference computes 0/0 for an image without liquid, and np.uint8(nan) gives black.
    return out * (peak.unsqueeze(1) > 0)


def _mud(images: Tensor, layer: Tensor, threshold: float, mask_sigma: float) -> Tensor:
    """Spatter's mud mode: images (N, 3, H, W), layer (N, H, W) thresholded liquid."""
    mask = gaussian_filter((layer > threshold).to(images.dtype), mask_sigma)  # (N, H, W)
    mask = (mask * (mask >= 0.8)).unsqueeze(1)  # (N, 1, H, W): `m[m < 0.8] = 0`
    colour = torch.tensor(MUD_COLOUR, device=images.device).view(1, 3, 1, 1)
    return (images * (1 - mask) + colour * mask).clamp_(0, 1)


@lru_cache(maxsize=16)
def _poisson_alias_table(rate: int, device: torch.device) -> Tensor:
    """Walker alias tables of Poisson(rate·level/255) for the 256 uint8 levels, (256·K,) int32:
    bucket k of level l at l·K + k holds its keep threshold (a 2^23 fraction, in the low 23
    bits) and its alias (above them). K, a power of two (so a bucket is a bit field of one
    random integer), covers the counts up to rate + 12√rate + 12 at least, beyond which the
    tail's mass is far under float precision. Built once per rate, on the host."""
    size = 1 << math.ceil(math.log2(rate + 12 * math.sqrt(rate) + 12))
    entries: list[int] = []
    for level in range(256):
        lam = rate * level / 255
        if lam == 0:
            pmf = [1.0] + [0.0] * (size - 1)
        else:
            pmf = [math.exp(k * math.log(lam) - lam - math.lgamma(k + 1)) for k in range(size)]
        total = sum(pmf)
        scaled = [p * size / total for p in pmf]
        keep = [1.0] * size
        alias = list(range(size))
        small = [k for k in range(size) if scaled[k] < 1]
        large = [k for k in range(size) if scaled[k] >= 1]
        while small and large:  # Vose's construction
            light, heavy = small.pop(), large.pop()
            keep[light], alias[light] = scaled[light], heavy
            scaled[heavy] += scaled[light] - 1
            (small if scaled[heavy] < 1 else large).append(heavy)
        for k in range(size):
            # A bucket kept with certainty is its own alias, so capping the threshold one
            # short of 2^23 moves at most 2^-23 of a bucket.
            threshold = min(round(keep[k] * (1 << _COIN_BITS)), _COIN_MASK)
            entries.append(threshold | (alias[k] << _COIN_BITS))
    return torch.tensor(entries, dtype=torch.int32, device=device)


def _canny(gray: Tensor) -> Tensor:
    """cv2.Canny(gray, 50, 150) (aperture 3, L1 gradient) on gray (N, H, W) holding uint8
    values -> (N, H, W) bool edges."""
    height, width = gray.shape[-2:]
    # 3×3 Sobel with replicated borders, separably; small integers, exact in float32.
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")  # (N, H + 2, W + 2)
    across = padded[..., 2:] - padded[..., :-2]  # (N, H + 2, W)
    dx = across[:, :-2] + 2 * across[:, 1:-1] + across[:, 2:]  # (N, H, W)
    smooth = padded[..., :-2] + 2 * padded[..., 1:-1] + padded[..., 2:]  # (N, H + 2, W)
    dy = smooth[:, 2:] - smooth[:, :-2]  # (N, H, W)
    magnitude = dx.abs() + dy.abs()
    # OpenCV reads the magnitude outside the image as 0.
    around = F.pad(magnitude, (1, 1, 1, 1))  # (N, H + 2, W + 2)

    def neighbour(row: int, col: int) -> Tensor:  # the magnitude at (y + row, x + col)
        return around[:, 1 + row : 1 + row + height, 1 + col : 1 + col + width]

    # The gradient's sector in OpenCV's fixed point (ints: |dx|·79109 is beyond float32).
    xs, ys = dx.to(torch.int32), dy.to(torch.int32)
    x = xs.abs()
    y = ys.abs() << _CANNY_SHIFT
    tg22x = x * _TG22
    horizontal = y < tg22x
    vertical = y > tg22x + (x << (_CANNY_SHIFT + 1))
    diagonal = ~(horizontal | vertical)
    main_diagonal = (xs ^ ys) >= 0  # OpenCV's s = +1: the gradient runs along y = x
    # Boolean algebra rather than torch.where, which is several times slower on the CPU.
    maximum = (
        (horizontal & (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1)))
        | (vertical & (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0)))
        | (
            diagonal
            & main_diagonal
            & (magnitude > neighbour(-1, -1))
            & (magnitude > neighbour(1, 1))
        )
        | (
            diagonal
            & ~main_diagonal
            & (magnitude > neighbour(-1, 1))
            & (magnitude > neighbour(1, -1))
        )
    )
    candidate = (maximum & (magnitude > _CANNY_LOW)).to(torch.uint8)  # (N, H, W) 0 / 1
    edges = candidate & (magnitude > _CANNY_HIGH)
    # Hysteresis: weak candidates 8-connected to a strong edge are edges too.
    for _ in range(_HYSTERESIS_STEPS):
        edges = candidate & _dilate3(edges)
    return edges > 0


def _dilate3(mask: Tensor) -> Tensor:
    """3×3 binary dilation of mask (N, H, W) uint8 0 / 1, separably."""
    padded = F.pad(mask, (1, 1, 1, 1))  # (N, H + 2, W + 2)
    across = padded[..., :-2] | padded[..., 1:-1] | padded[..., 2:]
    return across[:, :-2] | across[:, 1:-1] | across[:, 2:]


@lru_cache(maxsize=32)
def _chamfer_steps(width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The forward half of the 5×5 chamfer mask, as seen from pixel x of a row: the seven
    steps from the two rows above, as indices (7·W,) into those two padded rows laid end to
    end (2·(W + 4),), and weights (7, W) with x subtracted, so that the row's running minimum
    can be a plain cumulative minimum."""
    # (row above: 0 is two up, 1 is one up; dx; weight)
    mask = [(0, -1, _KNIGHT), (0, 1, _KNIGHT)] + [
        (1, dx, weight)
        for dx, weight in zip(
            range(-2, 3), (_KNIGHT, _DIAGONAL, _AXIAL, _DIAGONAL, _KNIGHT), strict=True
        )
    ]
    x = torch.arange(width).view(-1, 1)  # (W, 1)
    rows = torch.tensor([row for row, _, _ in mask]).view(1, -1)  # (1, 7)
    shifts = torch.tensor([dx for _, dx, _ in mask]).view(1, -1)
    weights = torch.tensor([weight for _, _, weight in mask], dtype=torch.float32).view(1, -1)
    indices = rows * (width + 4) + (x + 2) + shifts  # (W, 7): +2 for the padding
    # Laid out step-major, (7, W): the minimum over the steps then runs across rows of W.
    return indices.T.flatten().to(device), (weights - x).T.contiguous().to(device)


def _chamfer_distance(edges: Tensor) -> Tensor:
    """cv2.distanceTransform(255 - edges, DIST_L2, 5) truncated at 20, on edges (N, H, W).

    OpenCV's two raster passes; the backward pass is the forward one on the image turned by
    180° (the mask is symmetric). Starting the non-edge pixels at 20 applies the truncation;
    outside the image counts as far (20), as in OpenCV, whose borders never lower a distance.
    """
    dist = (~edges * _DISTANCE_CAP).to(torch.float32)  # (N, H, W)
    dist = _chamfer_pass(dist)
    return _chamfer_pass(dist.flip(1, 2)).flip(1, 2)


def _chamfer_pass(dist: Tensor) -> Tensor:
    """One forward raster pass over dist (N, H, W), a row at a time: a row first takes the
    finished rows above through the mask's steps, then runs left to right, where
    d[x] = min over k <= x of (c[k] + x - k) is a cumulative minimum of c[k] - k."""
    count, height, width = dist.shape
    indices, weights = _chamfer_steps(width, dist.device)  # (7·W,), (7, W)
    position = torch.arange(width, device=dist.device, dtype=torch.float32)  # (W,)
    start = dist - position  # (N, H, W)
    rows = F.pad(dist, (2, 2, 2, 0), value=_DISTANCE_CAP)  # (N, H + 2, W + 4): far borders
    for y in range(height):
        above = rows[:, y : y + 2].flatten(1)  # (N, 2·(W + 4)): rows y - 2 and y - 1
        offers = above.index_select(1, indices).view(count, 7, width) + weights  # (N, 7, W)
        best = torch.minimum(offers.amin(dim=1), start[:, y])  # (N, W)
        rows[:, y + 2, 2:-2] = best.cummin(dim=1).values + position
    return rows[:, 2:, 2:-2]


def _box3(field: Tensor) -> Tensor:
    """cv2.blur(field, (3, 3)) on (N, H, W): the 3×3 mean, OpenCV's reflect-101 border."""
    padded = F.pad(field, (1, 1, 1, 1), mode="reflect")  # (N, H + 2, W + 2)
    across = padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]
    return (across[:, :-2] + across[:, 1:-1] + across[:, 2:]) / 9


def _emboss(field: Tensor) -> Tensor:
    """cv2.filter2D with spatter's kernel [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]] (a correlation)
    on field (N, H, W), OpenCV's reflect-101 border."""
    height, width = field.shape[-2:]
    p = F.pad(field, (1, 1, 1, 1), mode="reflect")  # (N, H + 2, W + 2)

    def at(row: int, col: int) -> Tensor:  # the field at (y + row, x + col)
        return p[:, 1 + row : 1 + row + height, 1 + col : 1 + col + width]

    return at(0, 0) + at(0, 1) + at(1, 0) + 2 * at(1, 1) - 2 * at(-1, -1) - at(-1, 0) - at(0, -1)


def _equalize_hist(gray: Tensor) -> Tensor:
    """cv2.equalizeHist on gray (N, H, W) holding uint8 values: each image's levels mapped
    through its cumulative histogram, counted from above its darkest level, then rounded."""
    count, height, width = gray.shape
    levels = gray.reshape(count, -1).to(torch.int64)  # (N, H·W)
    histogram = torch.zeros(count, 256, device=gray.device, dtype=torch.float32)
    histogram.scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float32))
    cumulative = histogram.cumsum(dim=1)  # (N, 256)
    darkest = levels.amin(dim=1, keepdim=True)  # (N, 1)
    at_darkest = histogram.gather(1, darkest)  # (N, 1): OpenCV's hist[i] at the first level
    total = float(height * width)
    remaining = (total - at_darkest).clamp_min(1)  # (N, 1)
    # OpenCV's float32 255 / remaining; `255 / tensor` in torch multiplies by a reciprocal,
    # which rounds differently and flips the levels that land on exactly k + 0.5.
    scale = torch.full_like(remaining, 255.0) / remaining
    lut = torch.round((cumulative - at_darkest) * scale).clamp_(0, 255)  # (N, 256)
    mapped = lut.gather(1, levels).view_as(gray)
    # A one-level image is left as it is.
    flat = (at_darkest == total).view(count, 1, 1)
    return mapped + flat * (gray - mapped)
