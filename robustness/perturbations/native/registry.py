"""The native corruption registry and the one entry point, `corrupt_natively`.

A native corruption is a pure function `(images, severity, generator) -> images` on a batch of
float (N, 3, H, W) images in [0, 1], on any device, written with torch only (no host round
trips), with the reference's severity constants. It sees what the reference sees and returns
what the reference returns before its uint8 cast; the shared steps live here, once:

1. the input is quantised to the uint8 grid, as the reference's uint8 boundary does;
2. images with a side under 32 pixels are upsampled to 32 and brought back, as in
   `robustness.perturbations.corruptions` (the severity constants assume at least 32 pixels);
3. randomness comes from one `torch.Generator` on the batch's device, seeded by the job;
4. the output is clipped to [0, 1] and truncated to the uint8 grid, like `np.uint8(...)` in
   `imagecorruptions.corrupt` (skipped for `on_grid` corruptions, whose output already is).

`Fidelity` says how a corruption is held to the reference (`tests/test_native_corruptions.py`):
deterministic ones image by image (PSNR), random ones by the statistics of their change.
`default=True` marks a corruption that passed that gate: `engine: auto` serves it natively.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor

from iamt.registry import Registry
from iamt.vocabulary import SEVERITIES
from robustness.perturbations.base import PerturbationError

NativeFunction = Callable[[Tensor, int, torch.Generator], Tensor]

MIN_SIDE = 32  # the reference's smallest side


class Fidelity(StrEnum):
    DETERMINISTIC = "deterministic"  # same image in, same image out: compared per image (PSNR)
    RANDOM = "random"  # draws noise, angles, textures: compared by the change's statistics


@dataclass(frozen=True)
class NativeCorruption:
    name: str
    function: NativeFunction
    fidelity: Fidelity
    default: bool  # passed the fidelity gate: served natively under `engine: auto`
    # Returns level / 255 in [0, 1] already (lookups, codecs, copies of the input): the shared
    # clip and truncation would change nothing, so they are skipped.
    on_grid: bool = False


#: The native corruptions by name; an unknown name raises PerturbationError naming the valid ones.
NATIVE_CORRUPTIONS: Registry[NativeCorruption] = Registry("native corruption", PerturbationError)


def register_native(
    name: str, *, fidelity: Fidelity, default: bool, on_grid: bool = False
) -> Callable[[NativeFunction], NativeFunction]:
    """Decorator: register a native function as corruption `name` (twice raises
    `iamt.registry.DuplicateEntryError`); the function itself is returned unchanged."""

    def register(function: NativeFunction) -> NativeFunction:
        NATIVE_CORRUPTIONS.add(name, NativeCorruption(name, function, fidelity, default, on_grid))
        return function

    return register


def native_names(*, default_only: bool = False) -> list[str]:
    """The native corruptions, sorted; only those served under `engine: auto` if asked."""
    return [name for name, spec in NATIVE_CORRUPTIONS.items() if spec.default or not default_only]


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % 2**63)
    return generator


def corrupt_natively(images: Tensor, name: str, severity: int, seed: int) -> Tensor:
    """images (N, 3, H, W) float in [0, 1] -> corrupted by `name` at `severity`, on their device.

    `severity` is an int already validated by `Perturbation.validate_strength` (the one check of
    a strength); an unknown `name` raises PerturbationError naming the native corruptions."""
    spec = NATIVE_CORRUPTIONS.get(name)
    assert severity in SEVERITIES, f"severity {severity!r} was not validated"
    _, _, height, width = images.shape
    work = images.detach().float()  # (N, 3, H, W)
    size = (max(height, MIN_SIDE), max(width, MIN_SIDE))
    resized = size != (height, width)
    if resized:
        work = F.interpolate(work, size=size, mode="bilinear", align_corners=False, antialias=True)
    # The reference's uint8 input. In place after the first op: at these sizes a fresh tensor
    # per step costs more (page faults on new memory) than the arithmetic.
    work = work.mul(255).round_().clamp_(0, 255).div_(255)
    generator = make_generator(seed, work.device)
    out = spec.function(work, severity, generator)
    if out.shape != work.shape:
        raise AssertionError(f"native {name} returned {tuple(out.shape)} for {tuple(work.shape)}")
    if not spec.on_grid:
        # np.uint8 truncates; the small epsilon keeps values computed as k - 1e-6 at k.
        out = out.clamp(0, 1).mul_(255).add_(1e-4).floor_().div_(255)
    if resized:
        out = F.interpolate(out, size=(height, width), mode="area")
    return out.to(dtype=images.dtype).contiguous()
