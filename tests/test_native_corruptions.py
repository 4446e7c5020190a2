"""The native corruption engine against the reference (imagecorruptions), one registry entry at
a time: the fidelity gate for every corruption served natively by default, and the contract
(seeding, shapes, devices, the uint8 grid) for every native corruption."""

from __future__ import annotations

import pytest
import torch

from robustness.perturbations.corruptions import corrupt_images
from robustness.perturbations.native import NATIVE_CORRUPTIONS, Fidelity, corrupt_natively
from robustness.perturbations.native.fidelity import compare, fidelity_images

SEVERITIES = (1, 2, 3, 4, 5)
SEED = 1234


@pytest.fixture(scope="module")
def deterministic_sets() -> list[torch.Tensor]:
    """64 varied images at 32 px and at 64 px (the gate's deterministic sizes)."""
    return [fidelity_images(64, 32, seed=1), fidelity_images(64, 64, seed=2)]


@pytest.fixture(scope="module")
def random_set() -> torch.Tensor:
    """256 varied images at 32 px (the gate's statistics)."""
    return fidelity_images(256, 32, seed=3)


def gate_failures(
    name: str, deterministic_sets: list[torch.Tensor], random_set: torch.Tensor
) -> list[str]:
    spec = NATIVE_CORRUPTIONS[name]
    sets = deterministic_sets if spec.fidelity is Fidelity.DETERMINISTIC else [random_set]
    failures = []
    for images in sets:
        for severity in SEVERITIES:
            reference = corrupt_images(images, name, severity, SEED)
            native = corrupt_natively(images, name, severity, SEED)
            result = compare(name, severity, images, native, reference)
            if not result.passed:
                failures.append(f"{images.shape[-1]} px: {result.row()}")
    return failures


@pytest.mark.parametrize(
    "name", sorted(name for name, spec in NATIVE_CORRUPTIONS.items() if spec.default)
)
def test_a_default_native_corruption_passes_the_fidelity_gate(
    name: str, deterministic_sets: list[torch.Tensor], random_set: torch.Tensor
) -> None:
    assert not gate_failures(name, deterministic_sets, random_set)


@pytest.mark.parametrize("name", sorted(NATIVE_CORRUPTIONS))
def test_a_native_corruption_is_seeded_shaped_and_on_the_uint8_grid(name: str) -> None:
    images = fidelity_images(6, 32, seed=5)
    first = corrupt_natively(images, name, 3, seed=7)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, corrupt_natively(images, name, 3, seed=7))  # seeded
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal((first * 255).round() / 255, first)  # the reference's uint8 grid
    assert not torch.equal(first, images)  # it does corrupt
    if NATIVE_CORRUPTIONS[name].fidelity is Fidelity.RANDOM:
        assert not torch.equal(first, corrupt_natively(images, name, 3, seed=8))
    # Smaller and non-square images go through the same resizing rule as the reference.
    for shape in [(2, 3, 16, 16), (2, 3, 32, 48)]:
        odd = fidelity_images(2, 48, seed=6)[..., : shape[2], : shape[3]].contiguous()
        assert corrupt_natively(odd, name, 2, seed=1).shape == shape
