"""Native digital corruptions (see registry.py for the contract).

Five are deterministic (`Fidelity.DETERMINISTIC`, compared image by image), one is random:

- `contrast`: each channel pulled towards its image mean, (x − mean)·c + mean, clipped;
  tabulated per image and channel over the 256 input levels, then looked up.
- `brightness`: RGB → HSV as `skimage.color.rgb2hsv`, V + c clipped to [0, 1], back to RGB as
  `skimage.color.hsv2rgb`, in closed form: every channel scales by V′/V, tabulated over the
  256 × 256 (V, x) levels and looked up.
- `saturate`: the same HSV round trip with S·c₀ + c₁ clipped to [0, 1], in closed form (see
  the HSV section).
- `pixelate`: PIL's `Image.BOX` resize down to (⌊W·c⌋, ⌊H·c⌋), then `Image.NEAREST` back up,
  reproduced exactly: PIL's box coefficients (an input pixel counts when its centre falls in
  the output pixel's footprint) in PIL's 22-bit fixed point, the horizontal pass rounded to
  uint8 before the vertical one, and PIL's nearest-neighbour source indices.
- `jpeg_compression`: a JPEG round trip at the severity's quality through libjpeg
  (`torchvision.io.encode_jpeg` / `decode_jpeg`), whose defaults are PIL's: 4:2:0 chroma
  subsampling, the standard tables scaled by `jpeg_set_quality` and clamped to baseline, the
  islow DCT — the bytes are identical to PIL's. It runs on the CPU for every device (see
  below).
- `elastic_transform` (random): a per-pixel displacement field, uniform noise in
  ±0.005·H smoothed by a Gaussian (σ = 0.01 × side, truncated at 3σ, scipy's `reflect`
  border) and scaled by α, resamples the image bilinearly with a reflecting border (scipy's
  `map_coordinates(order=1, mode="reflect")` as `grid_sample`). This reference version has no
  random affine step.

Deliberate differences from the reference:
- `elastic_transform` draws its noise from torch's generator, not numpy's: the same seed gives a
  different (equally distributed) field; the gate compares statistics.
- `contrast` runs in float64 from the exact k / 255, as the reference does, and applies its
  uint8 truncation itself (returning level / 255): its results often land within 1e-12 below a
  uint8 step (every pixel of a flat image does), which the registry's final floor, with its
  1e-4 float32 slack, would round up. On the CPU it matches the reference bit for bit. Its
  mean is a running (cumsum) sum to add in numpy's order; on CUDA the scan adds in another
  order, so a flat image may come out one level apart.
- `brightness` and `saturate` compute the HSV round trip in closed form rather than through
  hue's sectors: the same values up to float rounding, so where the reference lands within
  rounding of a uint8 step a channel comes out one level apart (0.3-0.6 % of the values for
  brightness, 0.4-10 % for saturate; worst image 52 dB PSNR, against the gate's 35). The exact
  sector-by-sector round trip in float64 cost 4-6 times as much.
- `elastic_transform` runs in float32 (the reference mixes float32 and float64): given the same
  noise, a pixel here and there comes out one level apart.
- `jpeg_compression` copies the uint8 batch to the host and back: libjpeg is exact, while
  torchvision's nvJPEG path (CUDA) has its own DCT and chroma upsampling and has not been held
  to the reference.
"""

from __future__ import annotations

import warnings
from enum import StrEnum
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import decode_jpeg, encode_jpeg

from robustness.perturbations.native.filters import Border, gaussian_filter
from robustness.perturbations.native.registry import Fidelity, register_native

# imagecorruptions.corruptions.contrast: the factor the deviation from the mean is scaled by
CONTRAST_FACTORS: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1, 0.05)
# imagecorruptions.corruptions.brightness: what is added to HSV's V
BRIGHTNESS_SHIFTS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
# imagecorruptions.corruptions.saturate: HSV's S becomes S·scale + shift
SATURATE_PARAMETERS: tuple[tuple[float, float], ...] = (
    (0.3, 0),
    (0.1, 0),
    (2, 0),
    (5, 0.1),
    (20, 0.2),
)
# imagecorruptions.corruptions.jpeg_compression: the JPEG quality
JPEG_QUALITIES: tuple[int, ...] = (25, 18, 15, 10, 7)
# imagecorruptions.corruptions.pixelate: the downscale factor
PIXELATE_FACTORS: tuple[float, ...] = (0.6, 0.5, 0.4, 0.3, 0.25)
# imagecorruptions.corruptions.elastic_transform: the displacement field's scale α
ELASTIC_ALPHAS: tuple[float, ...] = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)
# imagecorruptions.corruptions.elastic_transform: noise amplitude and smoothing σ per side
ELASTIC_NOISE_FRACTION = 0.005
ELASTIC_SIGMA_FRACTION = 0.01
ELASTIC_TRUNCATE = 3.0

# Pillow's Resample.c: fixed-point bits of the 8-bit resampling coefficients
_PIL_PRECISION_BITS = 32 - 8 - 2


# --------------------------------------------------------------------------- contrast


def _truncated_like_reference(values: Tensor, dtype: torch.dtype) -> Tensor:
    """Apply the reference's `np.uint8(values * 255)` to float64 `values` in [0, 1] and return
    the level / 255 in `dtype`. Contrast lands many pixels (every pixel of a flat image)
    within 1e-12 below a uint8 step, which the reference truncates one level down; the
    registry's final floor adds 1e-4 for float32 slack and would round them up instead."""
    # Divide in `dtype` on the values' device, as the registry's own truncation does: CUDA
    # divides by a scalar through its reciprocal, so "k / 255" is the device's, not the host's.
    return torch.floor(values * 255).to(dtype).div_(255)


@register_native("contrast", fidelity=Fidelity.DETERMINISTIC, default=True, on_grid=True)
def contrast(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    factor = CONTRAST_FACTORS[severity - 1]
    count, channels, height, width = images.shape
    levels = images.mul(255).round_().to(torch.int32).flatten(2)  # (N, 3, H·W)
    # numpy's mean over (H, W) of an (H, W, 3) array adds the pixels one after another in row
    # order; a running sum (sequential on the CPU) rounds the same way, and that matters for flat
    # images, whose result is their mean itself, sitting on a uint8 step.
    sums = levels.double().div_(255).cumsum(-1)[..., -1:]  # (N, 3, 1)
    means = sums / (height * width)  # (N, 3, 1)
    # The result is a function of the pixel's level per image and channel: tabulate it over the
    # 256 levels (N·3·256 values in float64, not N·3·H·W) and look the pixels up.
    grid = torch.arange(256, device=images.device, dtype=torch.float64) / 255  # (256,)
    table = ((grid - means) * factor + means).clamp(0, 1)  # (N, 3, 256)
    table = _truncated_like_reference(table, images.dtype).flatten()  # (N·3·256,)
    # One flat lookup: pixel (n, c, ·) at level l reads table[(n·3 + c)·256 + l].
    planes = torch.arange(count * channels, device=images.device, dtype=torch.int32) * 256
    index = levels.add_(planes.view(count, channels, 1)).flatten()  # (N·3·H·W,)
    return table.index_select(0, index).view(count, channels, height, width)


# --------------------------------------------------------------------------- HSV


# The reference's HSV round trips (skimage's rgb2hsv, a change of V or S, hsv2rgb) in closed
# form. Hue is kept, so each pixel's channels keep their order and their relative distances
# below the maximum V: with m the minimum and Δ = V − m (so S = Δ / V), a channel x becomes
#   x·V′/V                 when only V changes (brightness), and
#   V − S′·V·(V − x)/Δ     when only S changes (saturate);
# a grey pixel (Δ = 0) has hue 0 in skimage, so saturating it turns it red: (V, V(1−S′), V(1−S′)).


@lru_cache(maxsize=8)
def _brightness_table(severity: int, device: torch.device) -> Tensor:
    """(256·256,) float32: the brightened level / 255 of a channel at level x in a pixel whose
    maximum channel is at level V, at index V·256 + x. Computed once in float64 from the exact
    k / 255, truncated like the reference's `np.uint8`; the maximum channel becomes V′ exactly,
    and a black pixel becomes the grey V′."""
    shift = BRIGHTNESS_SHIFTS[severity - 1]
    value = torch.arange(256, dtype=torch.float64)[:, None] / 255  # (256, 1): V
    channel = torch.arange(256, dtype=torch.float64)[None, :] / 255  # (1, 256): x ≤ V
    brightened = (value + shift).clamp(max=1)  # (256, 1): V′
    scaled = torch.where(value > 0, channel * (brightened / value.clamp_min(1 / 255)), brightened)
    scaled = torch.where(channel == value, brightened, scaled)  # (256, 256)
    levels = torch.floor(scaled.clamp(0, 1) * 255).to(torch.float32).flatten()  # (256·256,)
    # Divided on the device, as the registry's truncation does (CUDA divides via a reciprocal).
    return levels.to(device).div_(255)


@register_native("brightness", fidelity=Fidelity.DETERMINISTIC, default=True, on_grid=True)
def brightness(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """images (N, 3, H, W) -> V + c in HSV, clipped: a table lookup by (V, x) levels."""
    levels = (images * 255).round_().to(torch.int32)  # (N, 3, H, W)
    value = levels.amax(1, keepdim=True)  # (N, 1, H, W)
    table = _brightness_table(severity, images.device)
    index = (value * 256 + levels).flatten()  # (N·3·H·W,): index_select beats table[...] here
    return table.index_select(0, index).view(images.shape).to(images.dtype)


@register_native("saturate", fidelity=Fidelity.DETERMINISTIC, default=True)
def saturate(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """images (N, 3, H, W) -> S·c₀ + c₁ in HSV, clipped to [0, 1]."""
    scale, shift = SATURATE_PARAMETERS[severity - 1]
    value = images.amax(1, keepdim=True)  # (N, 1, H, W)
    delta = value - images.amin(1, keepdim=True)  # (N, 1, H, W)
    grey = delta == 0
    saturation = (delta / value.clamp_min(1 / 255)).mul_(scale).add_(shift).clamp_(0, 1)  # S′
    gain = saturation * value / torch.where(grey, 1.0, delta)  # (N, 1, H, W)
    out = value - gain * (value - images)  # (N, 3, H, W); a grey pixel's channels stay V
    # Hue 0 for grey: red keeps V, green and blue lose V·S′ (arithmetic, not a host-side test).
    green_and_blue = torch.tensor((0.0, 1.0, 1.0), device=images.device).view(1, 3, 1, 1)
    return out.sub_(green_and_blue * (grey * value * saturation))


# --------------------------------------------------------------------------- pixelate


@lru_cache(maxsize=64)
def _pil_box_matrix(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """(out, in) float64 matrix of Pillow's 8-bit BOX coefficients, as integers in 22-bit fixed
    point (Resample.c: `precompute_coeffs` with `box_filter`, then `normalize_coeffs_8bpc`).
    Built once per size on the host; float64 holds the integer sums exactly."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    rows = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        weights = [0.0] * in_size
        for x in range(xmin, xmax):
            u = (x - center + 0.5) / filterscale
            weights[x] = 1.0 if -0.5 < u <= 0.5 else 0.0
        total = sum(weights)
        fixed = [
            float(int(0.5 + (w / total if total else w) * (1 << _PIL_PRECISION_BITS)))
            for w in weights
        ]
        rows.append(fixed)
    return torch.tensor(rows, dtype=torch.float64, device=device)


@lru_cache(maxsize=64)
def _pil_nearest_indices(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """(out,) source indices of Pillow's NEAREST resize (`ImagingScaleAffine`): the source
    coordinate starts at scale/2 and is advanced by repeated addition, so its float rounding
    is reproduced too."""
    scale = in_size / out_size
    position = scale * 0.5
    indices = []
    for _ in range(out_size):
        indices.append(min(int(position), in_size - 1))
        position += scale
    return torch.tensor(indices, dtype=torch.long, device=device)


def _pil_box_pass(values: Tensor, matrix: Tensor) -> Tensor:
    """Resample the last axis of integer-valued float64 `values` (…, in) with a fixed-point
    (out, in) matrix, rounding and clipping to uint8 as Pillow does after each pass."""
    accumulated = values @ matrix.T + float(1 << (_PIL_PRECISION_BITS - 1))  # (…, out)
    return torch.floor(accumulated / float(1 << _PIL_PRECISION_BITS)).clamp(0, 255)


@register_native("pixelate", fidelity=Fidelity.DETERMINISTIC, default=True, on_grid=True)
def pixelate(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    factor = PIXELATE_FACTORS[severity - 1]
    _, _, height, width = images.shape
    small_height, small_width = int(height * factor), int(width * factor)
    device = images.device
    pixels = (images.double() * 255).round()  # (N, 3, H, W) integer valued
    # Horizontal pass first, rounded to uint8, then the vertical one (Pillow's order).
    across = _pil_box_pass(pixels, _pil_box_matrix(width, small_width, device))  # (N, 3, H, w)
    down = _pil_box_pass(
        across.transpose(2, 3), _pil_box_matrix(height, small_height, device)
    ).transpose(2, 3)  # (N, 3, h, w)
    rows = _pil_nearest_indices(small_height, height, device)  # (H,)
    columns = _pil_nearest_indices(small_width, width, device)  # (W,)
    # Nearest-neighbour upsampling as one index_select on flat planes (much cheaper than
    # indexing rows then columns); the levels are integers, exact in float32.
    sources = (rows[:, None] * small_width + columns[None, :]).flatten()  # (H·W,)
    small = down.to(images.dtype).div_(255).reshape(-1, small_height * small_width)  # (N·3, h·w)
    return small.index_select(1, sources).view(images.shape)  # (N, 3, H, W)


# --------------------------------------------------------------------------- jpeg


class JpegCodec(StrEnum):
    LIBJPEG = "libjpeg"  # the reference's codec, on the host: PIL's bytes, bit for bit
    NVJPEG = "nvjpeg"  # torchvision's CUDA codec: no host round trip, its own DCT and upsampling


# Which codec `jpeg_compression` uses on a CUDA batch (the CPU always uses libjpeg). nvJPEG is
# measured against the reference by `python -m benchmarks.native_gpu` before it may serve.
JPEG_CODEC_ON_CUDA = JpegCodec.LIBJPEG


def jpeg_round_trip(pixels: Tensor, quality: int, codec: JpegCodec) -> Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, H, W) uint8 encoded at `quality` and decoded, by `codec`
    (nvJPEG needs the batch on a CUDA device), returned on the batch's device."""
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of torchcodec on every call.
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")
        if codec is JpegCodec.NVJPEG:
            encoded = encode_jpeg(list(pixels.unbind(0)), quality=quality)  # on the GPU
            # decode_jpeg takes its bytes on the host (a few hundred per image) and decodes
            # them on `device` in one batched call.
            decoded = decode_jpeg([data.cpu() for data in encoded], device=pixels.device)
            return torch.stack(decoded, 0)
        # libjpeg on the CPU whatever the batch's device: this is the engine's one deliberate
        # host round trip of images. The codec works on (H, W, 3) pixels: handing it CHW views
        # of one HWC copy, and stacking its HWC results, saves a copy per image each way.
        on_host = pixels.cpu().permute(0, 2, 3, 1).contiguous()  # (N, H, W, 3)
        encoded = encode_jpeg([image.permute(2, 0, 1) for image in on_host], quality=quality)
        decoded = [image.permute(1, 2, 0) for image in decode_jpeg(encoded)]  # N × (H, W, 3)
        return torch.stack(decoded, 0).permute(0, 3, 1, 2).to(pixels.device)


@register_native("jpeg_compression", fidelity=Fidelity.DETERMINISTIC, default=True, on_grid=True)
def jpeg_compression(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    quality = JPEG_QUALITIES[severity - 1]
    pixels = images.mul(255).round_().to(torch.uint8)  # (N, 3, H, W); the input is in [0, 1]
    codec = JPEG_CODEC_ON_CUDA if images.is_cuda else JpegCodec.LIBJPEG
    decoded = jpeg_round_trip(pixels, quality, codec)  # (N, 3, H, W) uint8, maybe HWC strides
    # One pass converts to float and to the NCHW layout, then one scales.
    return torch.empty_like(images).copy_(decoded).div_(255)


# --------------------------------------------------------------------------- elastic


def _elastic_warp(images: Tensor, noise: Tensor, alpha: float) -> Tensor:
    """Warp (N, 3, H, W) `images` by the uniform `noise` (N, 2, H, W) (channel 0 the column
    shift, 1 the row shift), smoothed and scaled by `alpha`, as the reference's
    `map_coordinates(order=1, mode="reflect")`."""
    _, _, height, width = images.shape
    device = images.device
    sigma = (height * ELASTIC_SIGMA_FRACTION, width * ELASTIC_SIGMA_FRACTION)
    shift = gaussian_filter(noise, sigma, Border.REFLECT, ELASTIC_TRUNCATE).mul_(alpha)
    # shift: (N, 2, H, W) in pixels
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None]  # (H, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, :]  # (1, W)
    # grid_sample's normalised coordinates with align_corners=False: pixel p ↔ (2p + 1)/S − 1;
    # its reflection about the outer pixel edges is scipy's half-sample `reflect`.
    grid_x = (2 * (xs + shift[:, 0]) + 1) / width - 1  # (N, H, W)
    grid_y = (2 * (ys + shift[:, 1]) + 1) / height - 1  # (N, H, W)
    grid = torch.stack((grid_x, grid_y), -1)  # (N, H, W, 2)
    warped = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    return warped.clamp(0, 1)


@register_native("elastic_transform", fidelity=Fidelity.RANDOM, default=True)
def elastic_transform(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    alpha = ELASTIC_ALPHAS[severity - 1]
    count, _, height, _ = images.shape
    amplitude = height * ELASTIC_NOISE_FRACTION  # the reference uses H for both axes
    noise = torch.rand(count, 2, *images.shape[2:], generator=generator, device=images.device)
    noise = (noise * 2 - 1) * amplitude  # (N, 2, H, W): uniform(−a, a), dx then dy
    return _elastic_warp(images, noise, alpha)


__all__ = [
    "JPEG_CODEC_ON_CUDA",
    "JpegCodec",
    "brightness",
    "contrast",
    "elastic_transform",
    "jpeg_compression",
    "jpeg_round_trip",
    "pixelate",
    "saturate",
]
