"""The native corruption engine against the reference (imagecorruptions), one registry entry at
a time: the fidelity gate for every corruption served natively by default, and the contract
(seeding, shapes, devices, the uint8 grid) for every native corruption."""

from __future__ import annotations

import pytest
import torch

from robustness.perturbations.native import NATIVE_CORRUPTIONS, Fidelity, corrupt_natively
from robustness.perturbations.native.fidelity import GateImages, fidelity_images, gate


@pytest.fixture(scope="module")
def gate_images() -> GateImages:
    """64 varied images at 32 and 64 px (deterministic corruptions), 256 at 32 px (random)."""
    return GateImages.build()


@pytest.mark.parametrize(
    "name", sorted(name for name, spec in NATIVE_CORRUPTIONS.items() if spec.default)
)
def test_a_default_native_corruption_passes_the_fidelity_gate(
    name: str, gate_images: GateImages
) -> None:
    results = gate(name, gate_images)
    assert len(results) == 5 * (
        2 if NATIVE_CORRUPTIONS.get(name).fidelity is Fidelity.DETERMINISTIC else 1
    )
    assert not [f"{size} px: {result.row()}" for result, size in results if not result.passed]


@pytest.mark.parametrize("name", sorted(NATIVE_CORRUPTIONS))
def test_a_native_corruption_is_seeded_shaped_and_on_the_uint8_grid(name: str) -> None:
    images = fidelity_images(6, 32, seed=5)
    first = corrupt_natively(images, name, 3, seed=7)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, corrupt_natively(images, name, 3, seed=7))  # seeded
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal((first * 255).round() / 255, first)  # the reference's uint8 grid
    assert not torch.equal(first, images)  # it does corrupt
    if NATIVE_CORRUPTIONS.get(name).fidelity is Fidelity.RANDOM:
        assert not torch.equal(first, corrupt_natively(images, name, 3, seed=8))
    # Smaller and non-square images go through the same resizing rule as the reference.
    for shape in [(2, 3, 16, 16), (2, 3, 32, 48)]:
        odd = fidelity_images(2, 48, seed=6)[..., : shape[2], : shape[3]].contiguous()
        assert corrupt_natively(odd, name, 2, seed=1).shape == shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(NATIVE_CORRUPTIONS))
def test_a_native_corruption_runs_on_cuda_seeded_and_stays_there(name: str) -> None:
    images = fidelity_images(6, 32, seed=5).cuda()
    first = corrupt_natively(images, name, 3, seed=7)
    assert first.is_cuda and first.shape == images.shape
    assert torch.equal(first, corrupt_natively(images, name, 3, seed=7))  # seeded on the GPU
    assert torch.equal((first * 255).round() / 255, first)  # the reference's uint8 grid
    if NATIVE_CORRUPTIONS.get(name).fidelity is Fidelity.DETERMINISTIC:
        # The same maths as on the CPU: at most one uint8 level apart (float order differs).
        on_cpu = corrupt_natively(images.cpu(), name, 3, seed=7)
        assert float((first.cpu() - on_cpu).abs().max()) <= 1 / 255 + 1e-6
