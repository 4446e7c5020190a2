"""Native weather corruptions (see registry.py for the contract).

All three draw random numbers, so they are `Fidelity.RANDOM`: held to the reference by the
statistics of their change, not image by image (the reference draws from numpy's global state).

- **fog**: a diamond-square plasma fractal (the reference's `plasma_fractal`, one map per image,
  side the next power of two of the image's largest side, normalised to [0, 1] over the whole
  map, cropped to the image), added to the image and rescaled by `max / (max + c0)`. The
  diamond-square runs batched over images: its coarse levels (up to a 16 x 16 grid) as one
  matmul with a cached operator (it is linear in its random numbers), the finer ones one loop
  step per level.
- **frost**: one of the six frost textures shipped with imagecorruptions, picked at random per
  image, scaled as the reference scales it for the image size (cubic), cropped at a random
  offset and blended: `c0 · x + c1 · frost`. The textures are read from disk and resized once
  per image size and device, then cached (the reference re-reads and resizes them on every call).
  Registered with `default=False`: see the note at `frost` (a small excess in its change that
  the gate at 1,024 images only just tolerates).
- **snow**: a normal snow layer, zoomed (`clipped_zoom`, bilinear with scipy's corner-aligned
  grid), thresholded, motion-blurred along a random angle (the reference's own `_motion_blur`:
  edge-replicating shifts weighted by a half-Gaussian, here one depthwise convolution with a
  per-image kernel), rounded to the uint8 grid; the image is brightened towards its grey version
  and the layer is added together with its 180° rotation.

Deliberate differences from the reference:

- the random numbers come from a torch generator, so images differ from the reference's one by
  one, with the same distribution (fed the reference's own numpy draws, all three reproduce it:
  min PSNR over 60 dB, sizes 32 to 64, square or not);
- frost's cubic resize is torch's bicubic (a = -0.75, like OpenCV's INTER_CUBIC), rounded to
  uint8 as OpenCV does: at most 1 grey level off on about 0.01 % of texture pixels;
- snow draws only the part of its noise that `clipped_zoom` keeps (the rest is discarded by the
  reference unused), and computes the blur's angle in float32.
"""

from __future__ import annotations

import importlib.resources
import math
from functools import cache, lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from robustness.perturbations.native.filters import shifted_sum
from robustness.perturbations.native.registry import Fidelity, register_native

# imagecorruptions.corruptions.fog: (fog strength c0, wibble decay c1)
FOG_SEVERITIES: tuple[tuple[float, float], ...] = (
    (1.5, 2),
    (2.0, 2),
    (2.5, 1.7),
    (2.5, 1.5),
    (3.0, 1.4),
)

# imagecorruptions.corruptions.frost: (image weight c0, frost weight c1)
FROST_SEVERITIES: tuple[tuple[float, float], ...] = (
    (1, 0.4),
    (0.8, 0.6),
    (0.7, 0.7),
    (0.65, 0.7),
    (0.6, 0.75),
)

# imagecorruptions.corruptions.frost: the textures, in the reference's order.
FROST_FILES: tuple[str, ...] = (
    "frost1.png",
    "frost2.png",
    "frost3.png",
    "frost4.jpg",
    "frost5.jpg",
    "frost6.jpg",
)

# imagecorruptions.corruptions.snow: (loc, scale, zoom, threshold, blur radius, blur sigma,
# image weight)
SNOW_SEVERITIES: tuple[tuple[float, float, float, float, int, float, float], ...] = (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)

# cv2.COLOR_RGB2GRAY's weights (snow's grey version of the image).
GREY_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------------------- fog


def _next_power_of_2(value: int) -> int:
    """imagecorruptions.corruptions.next_power_of_2."""
    return 1 if value == 0 else 2 ** (value - 1).bit_length()


@lru_cache(maxsize=32)
def _wibble_amplitudes(mapsize: int, wibbledecay: float, device: torch.device) -> Tensor:
    """(m² - 1,) the wibble amplitude (wibble²) of each random number that the diamond-square
    on an m x m map draws, in the order `plasma_fractal` uses them: per level, k² for the
    squares, then k² for each of the two diamond sets, where k = m / step. The reference draws
    `wibble * uniform(-wibble, wibble)`, i.e. wibble² · uniform(-1, 1)."""
    amplitudes = []
    step, wibble, cells = mapsize, 100.0, 1
    while step >= 2:
        amplitudes += [wibble * wibble] * (3 * cells * cells)
        step //= 2
        wibble /= wibbledecay
        cells *= 2
    return torch.tensor(amplitudes, dtype=torch.float32, device=device)


def _diamond_square_levels(maps: Tensor, wibbles: Tensor, cells: int) -> None:
    """Run the reference's diamond-square levels, in place, on `maps` (B, m, m) whose grid of
    `cells` x `cells` corners (every m / cells pixels) is already filled, taking each level's
    wibbles from `wibbles` (B, m² - 1), ordered as `_wibble_amplitudes`. The maps are periodic:
    the reference's `np.roll` wraps around."""
    count, mapsize, _ = maps.shape
    step = mapsize // cells
    used = cells * cells - 1  # the wibbles of the coarser levels: 3 · (1 + 4 + ... )
    while step >= 2:
        half = step // 2
        size = cells * cells
        level = wibbles[:, used : used + 3 * size].view(count, 3, cells, cells)
        used += 3 * size
        # Squares: each square's centre is the mean of its corners plus a wibble.
        corners = maps[:, 0::step, 0::step]  # (B, k, k)
        below = torch.roll(corners, shifts=-1, dims=1)
        accum = corners + below
        accum = accum + torch.roll(accum, shifts=-1, dims=2)
        maps[:, half::step, half::step] = torch.add(level[:, 0], accum, alpha=0.25)
        # Diamonds: the edge midpoints, from the two neighbouring centres and corners.
        centres = maps[:, half::step, half::step]  # (B, k, k)
        left = (centres + torch.roll(centres, shifts=1, dims=1)) + (
            corners + torch.roll(corners, shifts=-1, dims=2)
        )
        maps[:, 0::step, half::step] = torch.add(level[:, 1], left, alpha=0.25)
        top = (centres + torch.roll(centres, shifts=1, dims=2)) + (corners + below)
        maps[:, half::step, 0::step] = torch.add(level[:, 2], top, alpha=0.25)
        step //= 2
        cells *= 2


COARSE_SIDE = 16  # the diamond-square's levels up to a 16 x 16 grid run as one matmul


@lru_cache(maxsize=8)
def _coarse_operator(side: int, device: torch.device) -> Tensor:
    """(side² - 1, side²): the diamond-square is linear in its wibbles, so its first log2(side)
    levels (the side x side grid of corners) are one matrix applied to the first side² - 1
    wibbles; found by running the levels on the unit vectors. Those levels are all per-call
    overhead on small tensors; one matmul replaces them."""
    basis = torch.eye(side * side - 1, device=device)  # (side² - 1, side² - 1)
    maps = torch.zeros(side * side - 1, side, side, device=device)
    _diamond_square_levels(maps, basis, 1)
    return maps.reshape(side * side - 1, side * side)


def plasma_fractal(
    count: int, mapsize: int, wibbledecay: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """`count` diamond-square height maps (count, mapsize, mapsize), not yet normalised, as the
    reference's `plasma_fractal`, batched over maps. All the random numbers are drawn at once
    and scaled by their level's wibble in one pass."""
    amplitude = _wibble_amplitudes(mapsize, float(wibbledecay), device)  # (m² - 1,)
    uniform = torch.rand(count, amplitude.numel(), generator=generator, device=device)
    wibbles = torch.addcmul(-amplitude, uniform, 2 * amplitude)  # (N, m² - 1), ±wibble²
    side = min(mapsize, COARSE_SIDE)
    coarse = wibbles[:, : side * side - 1] @ _coarse_operator(side, device)  # (N, side²)
    maps = torch.zeros(count, mapsize, mapsize, device=device)  # (N, m, m)
    stride = mapsize // side
    maps[:, ::stride, ::stride] = coarse.view(count, side, side)
    _diamond_square_levels(maps, wibbles, side)
    return maps


@register_native("fog", fidelity=Fidelity.RANDOM, default=True)
def fog(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    strength, decay = FOG_SEVERITIES[severity - 1]
    count, channels, height, width = images.shape
    # The reference takes max over the HWC shape, channels included.
    mapsize = _next_power_of_2(max(height, width, channels))
    maps = plasma_fractal(count, mapsize, decay, generator, images.device)  # (N, m, m)
    # plasma_fractal normalises the whole map to [0, 1]; folded into one scale below.
    low = maps.amin(dim=(1, 2)).view(count, 1, 1, 1)
    high = maps.amax(dim=(1, 2)).view(count, 1, 1, 1)
    max_val = images.amax(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    scale = max_val / (max_val + strength)  # (N, 1, 1, 1)
    # (x + c0 · plasma) · max / (max + c0), with plasma = (map - low) / (high - low), the same
    # map for all channels: the fog term on (N, 1, H, W), then one pass over the batch.
    fog_term = (maps[:, None, :height, :width] - low) * (strength * scale / (high - low))
    return torch.addcmul(fog_term, images, scale).clamp_(0, 1)


# -------------------------------------------------------------------------------------- frost


@cache
def _frost_texture(index: int) -> Tensor:
    """Texture `index` as read by the reference (cv2.imread then BGR -> RGB): (3, h, w) uint8,
    on the CPU. PIL's decode equals OpenCV's for these six files; alpha is dropped as cv2 does."""
    ref = importlib.resources.files("imagecorruptions") / "frost" / FROST_FILES[index]
    with importlib.resources.as_file(ref) as path, Image.open(path) as image:
        array = np.array(image.convert("RGB"))  # (h, w, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _frost_scaled_shape(texture_shape: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """The (rows, cols) the reference resizes a texture of `texture_shape` to for an image of
    `height` x `width`: grown to cover the image if needed, then by 1.1."""
    rows, cols = texture_shape
    factor = 1.0
    if rows < height and cols >= width:
        factor = height / rows
    elif rows >= height and cols < width:
        factor = width / cols
    elif rows < height and cols < width:
        factor = max(height / rows, width / cols)
    factor *= 1.1
    return int(np.ceil(rows * factor)), int(np.ceil(cols * factor))


@lru_cache(maxsize=16)
def _frost_bank(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The six textures resized for an image of `height` x `width`, zero-padded to one shape and
    stacked: (6, 3, R, C) uint8 on `device`, and per texture the number of crop offsets along
    each axis, size - image side (6, 2) int64 (the reference's `randint(0, size - side)`)."""
    scaled = []
    for index in range(len(FROST_FILES)):
        texture = _frost_texture(index)  # (3, h, w)
        rows, cols = _frost_scaled_shape((texture.shape[1], texture.shape[2]), height, width)
        # cv2.resize INTER_CUBIC on uint8: cubic with a = -0.75, rounded and saturated.
        resized = F.interpolate(
            texture[None].float(), size=(rows, cols), mode="bicubic", align_corners=False
        )[0]
        scaled.append(resized.round().clamp(0, 255).to(torch.uint8))
    max_rows = max(texture.shape[1] for texture in scaled)
    max_cols = max(texture.shape[2] for texture in scaled)
    bank = torch.zeros(len(scaled), 3, max_rows, max_cols, dtype=torch.uint8)
    for index, texture in enumerate(scaled):
        bank[index, :, : texture.shape[1], : texture.shape[2]] = texture
    spans = torch.tensor([[t.shape[1] - height, t.shape[2] - width] for t in scaled])
    return bank.to(device), spans.to(device)


# Not default. Given the same texture and crop this equals the reference (min PSNR over 60 dB;
# the cached textures match cv2.imread + cv2.resize to ±1 level, mean difference 0). Over the
# gate's 1,024 images it passes on the CPU (worst 0.016) and on an H100's stream only just
# (0.0499 at severity 4), and across 3 × 2 other seeds it gave 0.010-0.047 where the reference
# against itself gave 0.015-0.021: over 8 seeds each at severity 4 the red channel's mean change
# is 0.1803 ± 0.0011 here against 0.1762 ± 0.0011 in the reference, an excess of ~2 % whose
# cause we have not found. Until it is, frost stays on the reference under `auto`.
@register_native("frost", fidelity=Fidelity.RANDOM, default=False)
def frost(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    image_weight, frost_weight = FROST_SEVERITIES[severity - 1]
    count, _, height, width = images.shape
    device = images.device
    bank, all_spans = _frost_bank(height, width, device)  # (6, 3, R, C), (6, 2)
    choice = torch.randint(len(FROST_FILES), (count,), generator=generator, device=device)  # (N,)
    spans = all_spans[choice]  # (N, 2): the crop's offset is uniform in [0, span)
    starts = (torch.rand(count, 2, generator=generator, device=device) * spans).long()
    starts = torch.minimum(starts, spans - 1)  # guard against rand · span rounding up to span
    # The crop as one index_select on the flat bank (a four-way advanced index costs ~5x).
    _, _, bank_rows, bank_cols = bank.shape
    corner = (choice * 3 * bank_rows + starts[:, 0]) * bank_cols + starts[:, 1]  # (N,)
    within = _frost_crop_offsets(height, width, bank_rows, bank_cols, device)  # (3, H, W)
    sources = (corner[:, None, None, None] + within).flatten()  # (N·3·H·W,)
    crop = bank.flatten().index_select(0, sources).view(count, 3, height, width)  # uint8
    return torch.add(images * image_weight, crop, alpha=frost_weight / 255).clamp_(0, 1)


@lru_cache(maxsize=16)
def _frost_crop_offsets(
    height: int, width: int, bank_rows: int, bank_cols: int, device: torch.device
) -> Tensor:
    """(3, H, W) flat offsets, in a (6, 3, R, C) bank, of a crop's pixels from its corner."""
    channel = torch.arange(3, device=device)[:, None, None] * (bank_rows * bank_cols)
    row = torch.arange(height, device=device)[None, :, None] * bank_cols
    return channel + row + torch.arange(width, device=device)[None, None, :]


# --------------------------------------------------------------------------------------- snow


def _motion_blur_layers(
    layers: Tensor, radius: int, sigma: float, angles: Tensor, out_rows: int
) -> Tensor:
    """The reference's `_motion_blur` on (N, h, w) single-channel layers, one angle (degrees)
    in [-135, -45] per layer: the sum over taps i of kernel[i] · the layer shifted by
    (dy_i, dx_i) = -ceil(i · (sin, cos)(angle) - 0.5), edges replicated; the first `out_rows`
    rows of the result (N, out_rows, w).

    Done as one depthwise convolution with a per-layer kernel that holds the taps at their
    shifts (a gather per tap moves 25 times the data). With the angle in [-135, -45],
    dy_i >= 0 and |dx_i| <= i · sin(45°); layers whose dx_i >= 0 (cos < 0) are mirrored so that
    every shift points the same way and the kernel only needs one side."""
    count = layers.shape[0]
    device = layers.device
    taps = 2 * radius + 1
    # getMotionBlurKernel: a half-Gaussian over the taps, normalised.
    gauss = torch.exp(
        -(torch.arange(taps, device=device, dtype=torch.float32) ** 2) / (2 * sigma**2)
    )
    weights = (gauss / gauss.sum()).expand(count, taps)  # (N, T)
    radians = torch.deg2rad(angles)  # (N,)
    steps = torch.arange(taps, device=device, dtype=radians.dtype)  # (T,)
    dy = -torch.ceil(steps * torch.sin(radians)[:, None] - 0.5).long()  # (N, T), in [0, T-1]
    dx = -torch.ceil(steps * torch.cos(radians)[:, None] - 0.5).long()  # (N, T)
    mirror = torch.cos(radians) < 0  # (N,) these layers shift right (dx >= 0)
    reach = int((taps - 1) * math.sqrt(0.5) + 0.5)  # |dx| <= reach
    right = torch.where(mirror[:, None], dx, -dx).clamp(0, reach)  # (N, T)
    source = torch.where(mirror[:, None, None], layers.flip(2), layers)  # (N, h, w)
    up = dy.clamp(0, taps - 1)  # (N, T)
    blurred = shifted_sum(source[None], weights, up, right, taps - 1, reach, out_rows)[0]
    return torch.where(mirror[:, None, None], blurred.flip(2), blurred)  # (N, out_rows, w)


@lru_cache(maxsize=32)
def _zoom_matrix(size_in: int, size_out: int, device: torch.device) -> Tensor:
    """(size_out, size_in) linear interpolation along one axis, on scipy.ndimage.zoom's grid
    for order=1: output i sits at input i · (size_in - 1) / (size_out - 1), corners aligned,
    so no sample falls outside. Two of these make the zoom two small batched matmuls."""
    position = torch.arange(size_out, dtype=torch.float64) * (size_in - 1) / (size_out - 1)
    below = position.floor().long().clamp(max=size_in - 1)
    fraction = position - below
    above = (below + 1).clamp(max=size_in - 1)
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    matrix.index_put_((rows, below), 1 - fraction, accumulate=True)
    matrix.index_put_((rows, above), fraction, accumulate=True)
    return matrix.to(device=device, dtype=torch.float32)


@register_native("snow", fidelity=Fidelity.RANDOM, default=True)
def snow(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    loc, scale, zoom, threshold, radius, sigma, image_weight = SNOW_SEVERITIES[severity - 1]
    count, _, height, width = images.shape
    device = images.device
    # clipped_zoom keeps the central ceil(side / zoom) of the noise; only that part is drawn.
    crop_rows, crop_cols = math.ceil(height / zoom), math.ceil(width / zoom)
    noise = torch.randn(count, crop_rows, crop_cols, generator=generator, device=device)
    noise = noise.mul_(scale).add_(loc)  # (N, h0, w0), normal(loc, scale)
    # scipy.ndimage.zoom(order=1) to round(side · zoom) (>= the image's side): bilinear on
    # scipy's corner-aligned grid, as zoom_rows @ noise @ zoom_cols^T.
    zoom_rows = _zoom_matrix(crop_rows, round(crop_rows * zoom), device)  # (h1, h0)
    zoom_cols = _zoom_matrix(crop_cols, round(crop_cols * zoom), device)  # (w1, w0)
    layer = torch.matmul(torch.matmul(zoom_rows, noise), zoom_cols.T)  # (N, h1, w1)
    layer = layer.masked_fill_(layer < threshold, 0).clamp_(max=1)  # threshold > 0: no lower clip
    angles = -135 + 90 * torch.rand(count, generator=generator, device=device)  # (N,)
    layer = _motion_blur_layers(layer, radius, sigma, angles, height)[:, :, :width]  # (N, H, W)
    layer = torch.round(layer * 255) / 255  # the reference's uint8 snow layer
    flakes = (layer + torch.flip(layer, dims=(1, 2)))[:, None]  # (N, 1, H, W): plus its 180° turn
    # c6 · x + (1 - c6) · max(x, 1.5 · grey + 0.5) = x + (1 - c6) · relu(1.5 · grey + 0.5 - x),
    # grey with cv2.COLOR_RGB2GRAY's weights.
    red, green, blue = (weight * 1.5 for weight in GREY_WEIGHTS)
    bright = images[:, 0] * red + 0.5  # (N, H, W)
    bright = bright.add_(images[:, 1], alpha=green).add_(images[:, 2], alpha=blue)
    lift = (bright[:, None] - images).clamp_(min=0)  # (N, 3, H, W)
    return (images + flakes).add_(lift, alpha=1 - image_weight).clamp_(0, 1)
