"""The fidelity gate: how close a native corruption is to the reference (imagecorruptions).

- Deterministic corruptions: per-image PSNR of native against reference, on the same uint8
  inputs, must be at least `MIN_PSNR_DB` for every image.
- Random corruptions: per channel, the mean and standard deviation of (corrupted − clean) over
  all pixels of all images must agree with the reference's: the std within 5 % of the
  reference's, the mean within 5 % of the reference's mean or, when that mean is near zero
  (zero-mean noise), of its std — 5 % of a quantity that is ~0 only measures sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# The gate compares against the reference engine. corruptions.py imports the native package
# (never this module), so this import at the top makes no cycle.
from robustness.perturbations.corruptions import corrupt_images
from robustness.perturbations.native.registry import (
    NATIVE_CORRUPTIONS,
    Fidelity,
    corrupt_natively,
)

MIN_PSNR_DB = 35.0
STAT_TOLERANCE = 0.05
GATE_SEED = 1234  # the corruption seed of both engines in the gate
RANDOM_GATE_IMAGES = 1024  # images the random corruptions' statistics are taken over


def fidelity_images(count: int, size: int, seed: int = 0) -> Tensor:
    """(count, 3, size, size) float in [0, 1], on the uint8 grid: varied content — smooth
    colour fields, sharp-edged shapes, fine texture and flat areas — so that every corruption's
    edge, colour and frequency behaviour is exercised."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    texture = torch.rand(count, 3, size, size, generator=generator)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(count, 2, generator=generator) * size
    radius = (0.15 + 0.3 * torch.rand(count, generator=generator)) * size
    inside = ((ys - centre[:, 0, None, None]) ** 2 + (xs - centre[:, 1, None, None]) ** 2) < (
        radius[:, None, None] ** 2
    )  # (count, size, size)
    colour = torch.rand(count, 3, 1, 1, generator=generator)
    mix = torch.rand(count, 1, 1, 1, generator=generator)
    images = smooth * (1 - 0.3 * mix) + 0.3 * mix * texture
    images = torch.where(inside[:, None], colour.expand_as(images), images)
    flat = torch.arange(count) % 8 == 0  # some nearly flat images, like sky
    images[flat] = colour[flat].expand(-1, 3, size, size) * 0.9 + 0.05
    return ((images.clamp(0, 1) * 255).round() / 255).contiguous()


def psnr(native: Tensor, reference: Tensor) -> Tensor:
    """Per-image PSNR in dB (peak 1.0); identical images give +inf."""
    mse = ((native.double() - reference.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def change_statistics(clean: Tensor, corrupted: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per channel mean and std of (corrupted − clean) over every pixel of every image."""
    change = (corrupted.double() - clean.double()).transpose(0, 1).flatten(1)  # (3, N·H·W)
    return change.mean(1).numpy(), change.std(1).numpy()


@dataclass(frozen=True)
class GateResult:
    name: str
    severity: int
    fidelity: Fidelity
    metric: str  # what `value` is
    value: float  # min PSNR (dB), or the worst relative statistic error
    passed: bool

    def row(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"{self.name:<18} {self.severity}  {self.metric:<28} {self.value:9.3f}  {mark}"


def compare(
    name: str, severity: int, clean: Tensor, native: Tensor, reference: Tensor
) -> GateResult:
    """Judge `native` against `reference` (both corrupted from `clean`) by `name`'s fidelity."""
    fidelity = NATIVE_CORRUPTIONS.get(name).fidelity
    if fidelity is Fidelity.DETERMINISTIC:
        worst = float(psnr(native, reference).min())
        return GateResult(name, severity, fidelity, "min PSNR dB", worst, worst >= MIN_PSNR_DB)
    mean_n, std_n = change_statistics(clean, native)
    mean_r, std_r = change_statistics(clean, reference)
    scale = np.maximum(np.abs(mean_r), std_r)
    mean_error = np.abs(mean_n - mean_r) / np.maximum(scale, 1e-12)
    std_error = np.abs(std_n - std_r) / np.maximum(std_r, 1e-12)
    worst = float(max(mean_error.max(), std_error.max()))
    return GateResult(
        name, severity, fidelity, "max rel. error (mean, std)", worst, worst <= STAT_TOLERANCE
    )


@dataclass(frozen=True)
class GateImages:
    """The gate's inputs: 64 varied images at 32 and at 64 px (deterministic corruptions, per
    image) and 1,024 at 32 px (random corruptions, by statistics). The issue asks for at
    least 256: at 256, two seeds of the reference's own snow differ by up to 4.6 % and a
    faithful port failed on another random stream (5.3 % on CUDA); at 1,024 that noise is
    under 2 %, so the 5 % tolerance measures the port, not the luck of the draw."""

    deterministic: tuple[Tensor, ...]
    random: Tensor

    @classmethod
    def build(cls) -> GateImages:
        return cls(
            (fidelity_images(64, 32, seed=1), fidelity_images(64, 64, seed=2)),
            fidelity_images(RANDOM_GATE_IMAGES, 32, seed=3),
        )


def gate(
    name: str, images: GateImages, device: torch.device | str = "cpu"
) -> list[tuple[GateResult, int]]:
    """(result, image size) for `name` at every severity: the native engine on `device`
    against the reference (imagecorruptions, always on the CPU) on the same images."""
    sets = (
        images.deterministic
        if NATIVE_CORRUPTIONS.get(name).fidelity is Fidelity.DETERMINISTIC
        else (images.random,)
    )
    results = []
    for clean in sets:
        for severity in range(1, 6):
            reference = corrupt_images(clean, name, severity, GATE_SEED)
            native = corrupt_natively(clean.to(device), name, severity, GATE_SEED).cpu()
            results.append((compare(name, severity, clean, native, reference), clean.shape[-1]))
    return results
