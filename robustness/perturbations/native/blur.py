"""Native blur corruptions (see registry.py for the contract).

Deterministic (`Fidelity.DETERMINISTIC`, held to the reference image by image):

- `gaussian_blur`: `skimage.filters.gaussian` (scipy's `gaussian_filter`): a separable Gaussian
  of σ = c truncated at `int(4σ + 0.5)` pixels, with scipy's `nearest` border (edge replicated).
- `defocus_blur`: `cv2.filter2D` with the reference's anti-aliased `disk` kernel (an aliased
  disk, normalised, then smoothed by a 3×3 or 5×5 `cv2.GaussianBlur`), OpenCV's default
  `BORDER_REFLECT_101` border (torch's `reflect` padding) for both filters.
- `zoom_blur`: the mean of the image and its `clipped_zoom`s: a centred crop of
  `ceil(side / z)` pixels, zoomed back by `scipy.ndimage.zoom(order=1)` (linear interpolation,
  corner pixels aligned: output pixel o samples input `o · (in − 1) / (out − 1)`) to
  `round(crop · z)` pixels and cut to the image's size from the top-left corner.

Random (`Fidelity.RANDOM`, held to the reference by the statistics of their change):

- `motion_blur`: the reference's `_motion_blur`: an angle drawn uniformly in [−45°, 45°] per
  image; the image shifted, with its edge pixels replicated, by the integer steps of a line at
  that angle, and the shifts summed with a one-sided Gaussian kernel of `2·radius + 1` taps.
  Like the reference, taps that would move the image by a whole side or more are dropped
  without renormalising the kernel.
- `glass_blur`: Gaussian blur (as `gaussian_blur`), truncated to uint8, the reference's local
  pixel shuffle, Gaussian blur again. The shuffle visits the pixels one by one in reverse raster
  order and "swaps" each with a random pixel of the window `[−d, d − 1]²` around it; the swap,
  `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on array views, in fact copies: x[p] = x[p + d].
  A pixel copied from one visited earlier in the same pass takes that pixel's new value, so
  values travel along chains. We compute the same result in parallel: each pixel's chain of
  such links is followed by pointer doubling (log₂(H·W) gathers), giving one gather per pass.
  Given the same offsets this is exactly the reference's sequential scan.

Deliberate differences from the reference:
- The random streams are torch's, not numpy's or numba's: same seed, different (but equally
  distributed) angles and swaps.
- `defocus_blur` runs the disk filter as the sum of its few (3 to 7) exact separable SVD terms,
  and the separable filters as small matrix products with the border folded into the
  matrices; the result is the same filter up to float rounding.
- `motion_blur` draws its angle in float32, so the rounding of a tap's offset can differ from
  the reference's float64 at the exact half-pixel boundaries (a measure-zero set of angles).
- Everything runs in float32 (the reference mixes float64 and float32), so a value that lands
  within float rounding of a uint8 step may come out one level apart.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from robustness.perturbations.native.filters import (
    Border,
    filter_matrix,
    gaussian_filter,
    shifted_sum,
)
from robustness.perturbations.native.registry import Fidelity, register_native

# imagecorruptions.corruptions.gaussian_blur: the Gaussian's σ in pixels
GAUSSIAN_BLUR_SIGMAS: tuple[float, ...] = (1, 2, 3, 4, 6)
# imagecorruptions.corruptions.glass_blur: (σ, max_delta, iterations)
GLASS_BLUR_PARAMETERS: tuple[tuple[float, int, int], ...] = (
    (0.7, 1, 2),
    (0.9, 2, 1),
    (1, 2, 3),
    (1.1, 3, 2),
    (1.5, 4, 2),
)
# imagecorruptions.corruptions.defocus_blur: (disk radius, alias_blur σ)
DEFOCUS_BLUR_PARAMETERS: tuple[tuple[int, float], ...] = (
    (3, 0.1),
    (4, 0.5),
    (6, 0.5),
    (8, 0.5),
    (10, 0.5),
)
# imagecorruptions.corruptions.motion_blur: (radius, sigma) of `_motion_blur`
MOTION_BLUR_PARAMETERS: tuple[tuple[int, float], ...] = (
    (10, 3),
    (15, 5),
    (15, 8),
    (15, 12),
    (20, 15),
)
# imagecorruptions.corruptions.motion_blur: the angle's range in degrees
MOTION_BLUR_ANGLES: tuple[float, float] = (-45.0, 45.0)
# imagecorruptions.corruptions.zoom_blur: the zoom factors as np.arange(start, stop, step)
ZOOM_BLUR_RANGES: tuple[tuple[float, float, float], ...] = (
    (1, 1.11, 0.01),
    (1, 1.16, 0.01),
    (1, 1.21, 0.02),
    (1, 1.26, 0.02),
    (1, 1.31, 0.03),
)

# ---------------------------------------------------------------------------------------------
# gaussian_blur
# ---------------------------------------------------------------------------------------------


@register_native("gaussian_blur", fidelity=Fidelity.DETERMINISTIC, default=True)
def gaussian_blur(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """images (N, 3, H, W) in [0, 1] -> Gaussian-blurred, clipped like the reference."""
    sigma = GAUSSIAN_BLUR_SIGMAS[severity - 1]
    return gaussian_filter(images, sigma).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# defocus_blur
# ---------------------------------------------------------------------------------------------


def _disk_kernel(radius: int, alias_blur: float) -> Tensor:
    """The reference's `disk(radius, alias_blur)`: (K, K) float64 weights, K = 17 for radius
    ≤ 8 (the disk sits in a fixed 17×17 grid) and 2·radius + 1 above."""
    half = 8 if radius <= 8 else radius
    blur_size = 3 if radius <= 8 else 5  # the reference's cv2.GaussianBlur ksize
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    aliased = (xs**2 + ys**2 <= radius**2).to(torch.float32)  # (K, K), float32 as in the reference
    aliased = (aliased / aliased.sum()).to(torch.float64)
    # cv2.getGaussianKernel(blur_size, alias_blur): exp(-x² / 2σ²), normalised.
    taps = torch.arange(blur_size, dtype=torch.float64) - (blur_size - 1) / 2
    gauss = torch.exp(-(taps**2) / (2 * alias_blur**2))
    gauss = gauss / gauss.sum()
    # cv2.GaussianBlur is separable, with the default BORDER_REFLECT_101 border.
    side = 2 * half + 1
    smooth = filter_matrix(gauss, side, Border.REFLECT101)  # (K, K)
    return (smooth @ aliased @ smooth.T).to(torch.float32).to(torch.float64)


@lru_cache(maxsize=32)
def _disk_matrices(
    severity: int, height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The disk filter of `severity` as a sum of R separable filters (its SVD; the disk's
    symmetries make R ≤ 5 exact to 1e-8), each as border-aware matrices, stacked:
    rows (R, H, H) = [s_r·U_r] and columns (R, W, W) = [V_r], so that the filtered image is
    Σ_r rows_r @ image @ columns_rᵀ."""
    radius, alias_blur = DEFOCUS_BLUR_PARAMETERS[severity - 1]
    kernel = _disk_kernel(radius, alias_blur)  # (K, K) float64
    left, singular, right = torch.linalg.svd(kernel)
    rank = int((singular > 1e-7 * singular[0]).sum())
    rows = [
        singular[k] * filter_matrix(left[:, k], height, Border.REFLECT101) for k in range(rank)
    ]  # R × (H, H)
    columns = [filter_matrix(right[k], width, Border.REFLECT101) for k in range(rank)]  # R × (W, W)
    stacked_rows = torch.stack(rows).to(torch.float32)  # (R, H, H)
    stacked_columns = torch.stack(columns).to(torch.float32)  # (R, W, W)
    return stacked_rows.to(device), stacked_columns.to(device)


def _sum_of_separable(images: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """Σ_z rows_z @ images @ columns_zᵀ for images (N, C, H, W), rows (Z, H, H) and columns
    (Z, W, W): one matrix product into a reused buffer and one accumulating batched product
    per term (fresh tensors per term cost more than the arithmetic at these sizes)."""
    height, width = images.shape[-2:]
    flat = images.reshape(-1, width)  # (N·C·H, W)
    across = torch.empty_like(flat)  # (N·C·H, W)
    total = torch.zeros_like(images)
    planes = total.view(-1, height, width)  # (N·C, H, W)
    for term in range(rows.shape[0]):
        torch.mm(flat, columns[term].T, out=across)
        planes.baddbmm_(rows[term].expand(planes.shape[0], height, height), across.view_as(planes))
    return total


@register_native("defocus_blur", fidelity=Fidelity.DETERMINISTIC, default=True)
def defocus_blur(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """images (N, 3, H, W) in [0, 1] -> filtered by the anti-aliased disk, clipped."""
    _, _, height, width = images.shape
    rows, columns = _disk_matrices(severity, height, width, images.device)  # (R, H, H), (R, W, W)
    # cv2.filter2D correlates with BORDER_REFLECT_101; the matrices hold that border.
    return _sum_of_separable(images, rows, columns).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------
# zoom_blur
# ---------------------------------------------------------------------------------------------


def _zoom_factors(severity: int) -> list[float]:
    """`np.arange(start, stop, step)` of the reference, in the same float64 arithmetic."""
    start, stop, step = ZOOM_BLUR_RANGES[severity - 1]
    count = math.ceil((stop - start) / step)
    return [start + index * step for index in range(count)]


def _clipped_zoom_taps(side: int, zoom: float) -> tuple[list[int], list[int], list[float]]:
    """Along one axis of `side` pixels: for every output pixel of `clipped_zoom(·, zoom)`, the
    two input pixels it interpolates and the weight of the second (scipy's order-1 zoom)."""
    crop = math.ceil(side / zoom)
    top = (side - crop) // 2
    zoomed = round(crop * zoom)  # scipy's output shape, >= side; cut to `side` afterwards
    scale = (crop - 1) / (zoomed - 1) if zoomed > 1 else 1.0
    lower, upper, weights = [], [], []
    for out in range(side):
        position = out * scale  # in the crop, within [0, crop − 1]
        base = min(math.floor(position), crop - 1)
        lower.append(top + base)
        upper.append(top + min(base + 1, crop - 1))
        weights.append(position - base)
    return lower, upper, weights


def _interpolation_matrices(severity: int, side: int) -> Tensor:
    """(Z, side, side) float64: row o of matrix z holds the linear-interpolation weights with
    which `clipped_zoom` by factor z builds output pixel o from the input pixels."""
    factors = _zoom_factors(severity)
    matrices = torch.zeros(len(factors), side, side, dtype=torch.float64)
    for index, zoom in enumerate(factors):
        lower, upper, weights = _clipped_zoom_taps(side, zoom)
        for out in range(side):
            matrices[index, out, lower[out]] += 1 - weights[out]
            matrices[index, out, upper[out]] += weights[out]
    return matrices


@lru_cache(maxsize=32)
def _zoom_terms(
    severity: int, height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The sum of the zoom layers, Σ_z R_z · x · C_zᵀ, as the fewest separable terms
    Σ_m rows_m · x · columns_mᵀ: returns rows (M, H, H) and columns (M, W, W) in float32.

    The operator Σ_z R_z ⊗ C_z rearranges to A_R A_Cᵀ, with A_R = [vec R_1 … vec R_Z] (H², Z)
    and A_C likewise, and its SVD gives the terms. The zooms' matrices are nearly dependent,
    so 6-11 terms (singular values above 1e-7 of the largest) do the work of 11-16 layers."""
    rows = _interpolation_matrices(severity, height).flatten(1).T  # (H², Z)
    columns = _interpolation_matrices(severity, width).flatten(1).T  # (W², Z)
    rows_basis, rows_factor = torch.linalg.qr(rows)  # (H², Z), (Z, Z)
    columns_basis, columns_factor = torch.linalg.qr(columns)
    left, singular, right = torch.linalg.svd(rows_factor @ columns_factor.T)
    keep = int((singular > 1e-7 * singular[0]).sum())
    term_rows = (rows_basis @ left[:, :keep] * singular[:keep]).T.reshape(keep, height, height)
    term_columns = (columns_basis @ right[:keep].T).T.reshape(keep, width, width)
    # Round-off leaves entries near 1e-20 where the true ones are 0; they become 0.
    term_rows = term_rows.where(term_rows.abs() > 1e-12, 0.0)
    term_columns = term_columns.where(term_columns.abs() > 1e-12, 0.0)
    term_rows = term_rows.to(torch.float32).contiguous()  # products want plain layouts
    term_columns = term_columns.to(torch.float32).contiguous()
    return term_rows.to(device), term_columns.to(device)


@register_native("zoom_blur", fidelity=Fidelity.DETERMINISTIC, default=True)
def zoom_blur(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """images (N, 3, H, W) in [0, 1] -> the mean of the image and its centred zooms."""
    _, _, height, width = images.shape
    rows, columns = _zoom_terms(severity, height, width, images.device)  # (M, H, H), (M, W, W)
    layers = len(_zoom_factors(severity))
    # The reference adds the zoom layers to `x` and divides by their number plus one.
    total = _sum_of_separable(images, rows, columns).add_(images)  # (N, 3, H, W)
    return total.div_(layers + 1).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------
# motion_blur
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _motion_kernel(severity: int, device: torch.device) -> Tensor:
    """`getMotionBlurKernel(2·radius + 1, sigma)`: (T,) one-sided Gaussian weights, tap i at
    distance i along the motion, normalised over the T taps."""
    radius, sigma = MOTION_BLUR_PARAMETERS[severity - 1]
    steps = torch.arange(2 * radius + 1, dtype=torch.float64)
    weights = torch.exp(-(steps**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    return (weights / weights.sum()).to(torch.float32).to(device)


def _motion_steps(
    severity: int,
    count: int,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draw the reference's angle per image and lay out its taps. Returns `downward` (N,) bool,
    the images whose line points down (their taps move the image up: dy < 0, or no rows at
    all), and per tap (N, T): the tap's weight (0 past the reference's `break`) and the shifts
    `up` = |dy| and `right` = −dx (integers ≥ 0, int64), in a frame where the line points up."""
    kernel = _motion_kernel(severity, device)  # (T,)
    low, high = MOTION_BLUR_ANGLES
    angle = low + (high - low) * torch.rand(count, generator=generator, device=device)  # (N,)
    radians = torch.deg2rad(angle)
    steps = torch.arange(kernel.shape[0], device=device, dtype=torch.float32)  # (T,)
    # `_motion_blur`: tap i shifts the image by (dy, dx) = −ceil(i · (sin, cos) − 0.5), so
    # shifted[y, x] = image[clamp(y − dy), clamp(x − dx)]: the line's pixels, edge repeated.
    dy = -torch.ceil(steps * torch.sin(radians)[:, None] - 0.5)  # (N, T)
    dx = -torch.ceil(steps * torch.cos(radians)[:, None] - 0.5)  # (N, T), <= 0 for |angle| <= 45°
    # The reference stops at the first tap that shifts by a whole side or more, and does not
    # renormalise the kernel; the shifts grow with i, so that is a running "still inside".
    inside = ((dy.abs() < height) & (dx.abs() < width)).int()
    weights = kernel * torch.cummin(inside, dim=1).values  # (N, T)
    downward = dy[:, -1] <= 0  # (N,): these images are flipped upside down so that dy >= 0
    return downward, weights, dy.abs().long(), (-dx).long()


@register_native("motion_blur", fidelity=Fidelity.RANDOM, default=True)
def motion_blur(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """images (N, 3, H, W) in [0, 1] -> blurred along a random line per image."""
    count, _, height, width = images.shape
    downward, weights, up, right = _motion_steps(
        severity, count, height, width, generator, images.device
    )
    # Taps past a whole side have weight 0, so the kernel need not reach further than the image;
    # with |angle| <= 45°, |dy| <= (T − 1)·sin 45° rounded.
    taps = weights.shape[1]
    max_up = min(int((taps - 1) * math.sqrt(0.5) + 0.5), height - 1)
    max_right = min(taps - 1, width - 1)
    flip = downward[:, None, None, None]  # (N, 1, 1, 1)
    work = torch.where(flip, images.flip(2), images).transpose(0, 1)  # (3, N, H, W)
    up, right = up.clamp(max=max_up), right.clamp(max=max_right)  # only zero-weight taps move
    blurred = shifted_sum(work, weights, up, right, max_up, max_right).transpose(0, 1)
    return torch.where(flip, blurred.flip(2), blurred).clamp_(0, 1)  # (N, 3, H, W)


# ---------------------------------------------------------------------------------------------
# glass_blur
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _glass_tables(
    severity: int, height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """`visited` (H·W,) bool: the pixels the reference's scan visits, rows and columns
    `side − d` down to `d + 1` (so that every partner within [−d, d − 1]² stays inside the
    image); `offsets` ((2d)²,) int64: the flat offset dy·W + dx of each window position, in
    the order dy = k // 2d − d, dx = k % 2d − d."""
    _, delta, _ = GLASS_BLUR_PARAMETERS[severity - 1]
    rows = (torch.arange(height) > delta) & (torch.arange(height) <= height - delta)
    columns = (torch.arange(width) > delta) & (torch.arange(width) <= width - delta)
    visited = (rows[:, None] & columns[None, :]).flatten()
    window = torch.arange(-delta, delta)
    offsets = (window[:, None] * width + window[None, :]).flatten()
    return visited.to(device), offsets.to(device)


def _glass_sources(
    severity: int,
    count: int,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    """The reference's pixel shuffle as a gather: (N, H·W) flat indices, pixel i of the
    shuffled image being pixel source[i] of the image before it."""
    _, delta, iterations = GLASS_BLUR_PARAMETERS[severity - 1]
    pixels = torch.arange(height * width, device=device)  # (H·W,)
    visited, offsets = _glass_tables(severity, height, width, device)  # (H·W,), ((2d)²,)
    # 2^jumps >= H·W covers any chain; with d = 1 every partner lies before p in raster order
    # (offsets in [−1, 0]²), so there are no chains to follow.
    jumps = 0 if delta == 1 else math.ceil(math.log2(height * width))
    source = pixels.expand(count, -1)  # (N, H·W)
    for iteration in range(iterations):
        # numba's np.random.randint(-d, d, size=2) per visited pixel: dx, dy in [−d, d − 1],
        # drawn together as one of the (2d)² offsets of the window.
        window = torch.randint(
            0, 4 * delta * delta, (count, height * width), generator=generator, device=device
        )  # (N, H·W): dy = window // 2d − d, dx = window % 2d − d
        offset = offsets.index_select(0, window.flatten()).view(count, -1)  # (N, H·W)
        partner = pixels + offset * visited  # (N, H·W); unvisited pixels: their own partner
        # The reference's "swap" `x[h, w], x[h', w'] = x[h', w'], x[h, w]` swaps two views of
        # the same array, so it only copies: x[p] = x[p + d], in reverse raster order. A
        # partner later in raster order was visited earlier in the pass (or never: then it is
        # its own partner) and hands on its new value, so p takes what its partner took:
        # follow those links (pointer doubling) to the first pixel whose partner still held
        # its old value, and take that partner.
        link = torch.maximum(partner, pixels)  # (N, H·W): the partner if it came first, else p
        for _ in range(jumps):
            following = link.gather(1, link)
            # Chains are short (a few links): on the CPU, stop once every link has reached its
            # chain's end. On a GPU that test would be a host round trip, so all jumps run.
            if not following.is_cuda and torch.equal(following, link):
                break
            link = following
        taken = partner.gather(1, link)  # (N, H·W): the pre-pass pixel each pixel copies
        source = taken if iteration == 0 else source.gather(1, taken)
    return source


@register_native("glass_blur", fidelity=Fidelity.RANDOM, default=True)
def glass_blur(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """images (N, 3, H, W) in [0, 1] -> blurred, locally shuffled, blurred again."""
    count, channels, height, width = images.shape
    sigma, _, _ = GLASS_BLUR_PARAMETERS[severity - 1]
    # np.uint8(gaussian(x) * 255): truncated to the uint8 grid.
    blurred = torch.floor(gaussian_filter(images, sigma) * 255) / 255
    source = _glass_sources(severity, count, height, width, generator, images.device)
    flat = blurred.reshape(count, channels, height * width)
    shuffled = flat.gather(2, source[:, None].expand(-1, channels, -1)).view_as(images)
    return gaussian_filter(shuffled, sigma).clamp(0, 1)
