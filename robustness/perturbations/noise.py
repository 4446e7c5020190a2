"""The noise family: additive and signal-dependent pixel noise at a continuous strength (an ε),
written in torch so that it runs where the batch is.

Distinct from the ImageNet-C noise *corruptions* (`gaussian_noise`, `shot_noise`, ...: five fixed
severities, the corruption family), whose native port is `native/noise_corruptions.py`.

Every perturbation here is model-independent (generated once per job, then evaluated by every
variant), batched, and draws all its randomness from the `torch.Generator` the base class seeds
from the job — on the batch's own device, so a CUDA batch never makes a host round-trip and the
same seed gives the same tensor bytes on every rerun.

The strength `s` is an *epsilon* in [0, 1] pixel units; `s = 0` always returns the clean image
and larger `s` always means more noise. The result is clipped to [0, 1] by the base class.

| name       | x' (before clipping)                        | what `s` is                          |
|------------|---------------------------------------------|--------------------------------------|
| `gaussian` | x + s·N(0, 1)                               | the noise standard deviation         |
| `shot`     | Poisson(x·λ) / λ,  λ = 1 / s² photons       | the noise std at intensity 1         |
|            | per unit intensity                          | (std √x·s at intensity x)            |
| `impulse`  | each element, with probability s, set to 0  | the fraction of replaced elements    |
|            | or 1 (half each), else x                    |                                      |
| `speckle`  | x + x·s·N(0, 1)                             | the relative noise std (std x·s)     |
| `uniform`  | x + U(−s, s)                                | the half-width of the noise          |

ImageNet-C (Hendrycks & Dietterich, ICLR 2019) uses the same formulas at five fixed strengths;
those live in `corruptions.py` (severity axis) and `native/noise_corruptions.py`. This module
exposes the continuous scale so that a sweep can trace accuracy against noise level. `impulse`
acts on each element (pixel and channel) independently, as scikit-image's
`random_noise(mode="s&p")` and ImageNet-C do.

The noise of a batch is drawn from one stream, so it is reproducible for the same batch and seed,
but an image's noise depends on its position in the batch — and for `shot` on the CPU also on the
other images' content, since torch's CPU Poisson sampler consumes a value-dependent number of
draws. (The corruptions seed per image instead; here one batched draw is what keeps it fast.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from iamt.vocabulary import Family, StrengthAxis
from robustness.perturbations.base import ImagePerturbation, register_perturbation

__all__ = [
    "GaussianNoise",
    "ImpulseNoise",
    "NoisePerturbation",
    "ShotNoise",
    "SpeckleNoise",
    "UniformNoise",
]


class NoisePerturbation(ImagePerturbation):
    """Shared class attributes of the noise family: an epsilon in [0, 1] pixel units."""

    family: ClassVar[Family] = Family.NOISE
    axis: ClassVar[StrengthAxis] = StrengthAxis.EPSILON
    min_strength: ClassVar[float] = 0.0
    max_strength: ClassVar[float] = 1.0


def _normal(images: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like `images`, on its device, from the job's generator."""
    return torch.randn(
        images.shape, generator=generator, device=images.device, dtype=images.dtype
    )  # (N, 3, H, W)


def _uniform01(images: Tensor, generator: torch.Generator) -> Tensor:
    """U[0, 1) noise shaped like `images`, on its device, from the job's generator."""
    return torch.rand(
        images.shape, generator=generator, device=images.device, dtype=images.dtype
    )  # (N, 3, H, W)


@register_perturbation
@dataclass(frozen=True)
class GaussianNoise(NoisePerturbation):
    """x' = x + s·N(0, 1): additive white Gaussian noise of standard deviation s."""

    name: ClassVar[str] = "gaussian"

    def _perturb(
        self, images: Tensor, strength: float, generator: torch.Generator, seed: int
    ) -> Tensor:
        return images + strength * _normal(images, generator)


@register_perturbation
@dataclass(frozen=True)
class ShotNoise(NoisePerturbation):
    """x' = Poisson(x·λ)/λ with λ = 1/s² photons per unit intensity (photon-counting noise).

    Parametrized by s rather than λ so that the scale reads like the other noises: s is the
    standard deviation at intensity 1, the noise grows with s, and s = 0 (infinitely many
    photons) is the clean image, returned as is instead of dividing by zero.
    """

    name: ClassVar[str] = "shot"

    def _perturb(
        self, images: Tensor, strength: float, generator: torch.Generator, seed: int
    ) -> Tensor:
        if strength == 0.0:
            return images.clone()
        photons = 1.0 / strength**2  # λ
        # torch.poisson has no half-precision kernel on every device: count in float32 at least.
        work_dtype = torch.promote_types(images.dtype, torch.float32)
        rates = images.to(work_dtype) * photons  # (N, 3, H, W)
        counts = torch.poisson(rates, generator=generator)
        return (counts / photons).to(images.dtype)


@register_perturbation
@dataclass(frozen=True)
class ImpulseNoise(NoisePerturbation):
    """Salt and pepper: each element is replaced with probability s, by 0 or 1 equally often.

    One uniform draw u per element decides both things: u < s/2 → 0 (pepper), s/2 ≤ u < s → 1
    (salt), else unchanged — exactly probability s of a replacement, half of each kind.
    """

    name: ClassVar[str] = "impulse"

    def _perturb(
        self, images: Tensor, strength: float, generator: torch.Generator, seed: int
    ) -> Tensor:
        u = _uniform01(images, generator)  # (N, 3, H, W)
        salt_or_pepper = (u >= 0.5 * strength).to(images.dtype)  # 1 = salt, 0 = pepper
        return torch.where(u < strength, salt_or_pepper, images)


@register_perturbation
@dataclass(frozen=True)
class SpeckleNoise(NoisePerturbation):
    """x' = x + x·s·N(0, 1): multiplicative noise, strongest on bright pixels, none on black."""

    name: ClassVar[str] = "speckle"

    def _perturb(
        self, images: Tensor, strength: float, generator: torch.Generator, seed: int
    ) -> Tensor:
        return images + images * strength * _normal(images, generator)


@register_perturbation
@dataclass(frozen=True)
class UniformNoise(NoisePerturbation):
    """x' = x + U(−s, s): bounded additive noise, |x' − x| ≤ s like an L∞ ball of radius s."""

    name: ClassVar[str] = "uniform"

    def _perturb(
        self, images: Tensor, strength: float, generator: torch.Generator, seed: int
    ) -> Tensor:
        return images + strength * (2.0 * _uniform01(images, generator) - 1.0)
