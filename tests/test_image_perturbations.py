"""Model-independent perturbations: the noise family (torch) and the 19 ImageNet-C corruptions.

Parametrized over the registry (`list_perturbations(family)`), as timm's tests are over
`list_models()`: a newly registered noise or corruption is tested for free.
"""

from __future__ import annotations

import dataclasses
import itertools
import pickle
from typing import ClassVar

import imagecorruptions
import numpy as np
import pytest
import torch
from torch import Tensor

from iamt.data.shapes import make_shapes
from iamt.vocabulary import Engine
from robustness.perturbations import (
    Family,
    ImagePerturbation,
    PerturbationError,
    StrengthAxis,
    create_perturbation,
    get_perturbation_class,
    list_perturbations,
)
from robustness.perturbations.corruptions import SEED_KEYWORD_CORRUPTIONS, Corruption
from robustness.perturbations.native import NATIVE_CORRUPTIONS, native_names

NOISES = list_perturbations(Family.NOISE)
CORRUPTIONS = list_perturbations(Family.CORRUPTION)

# Corruptions that draw nothing at random: fixed blur kernels (defocus, gaussian, zoom), colour
# shifts (brightness, contrast, saturate), a resize (pixelate) and a JPEG round-trip. Checked
# empirically at every severity: the seed does not change their output. motion_blur is NOT among
# them: it draws its blur angle from U(-45°, 45°). If the package ever adds randomness to one of
# these, `test_corruption_seed_changes_output` says so.
DETERMINISTIC_CORRUPTIONS = frozenset(
    {
        "brightness",
        "contrast",
        "defocus_blur",
        "gaussian_blur",
        "jpeg_compression",
        "pixelate",
        "saturate",
        "zoom_blur",
    }
)


@pytest.fixture(scope="module")
def images() -> Tensor:
    """Four varied 32×32 images: objects of several shapes and colours on textured backgrounds."""
    batch = make_shapes(4, seed=0).images
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32
    return batch


def _perturbation(name: str) -> ImagePerturbation:
    perturbation = create_perturbation(name)
    assert isinstance(perturbation, ImagePerturbation)
    return perturbation


def _check_output(out: Tensor, images: Tensor) -> None:
    assert out.shape == images.shape
    assert out.dtype == images.dtype
    assert out.device == images.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


# ---------------------------------------------------------------- registry


def test_registry_lists_every_family_member() -> None:
    assert NOISES == ["gaussian", "impulse", "shot", "speckle", "uniform"]
    assert set(CORRUPTIONS) == set(imagecorruptions.get_corruption_names("all"))
    assert len(CORRUPTIONS) == 19
    for name in NOISES:
        cls = get_perturbation_class(name)
        assert (cls.family, cls.axis) == (Family.NOISE, StrengthAxis.EPSILON)
    for name in CORRUPTIONS:
        cls = get_perturbation_class(name)
        assert (cls.family, cls.axis) == (Family.CORRUPTION, StrengthAxis.SEVERITY)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(PerturbationError) as error:
        get_perturbation_class("gausian")
    message = str(error.value)
    assert "'gausian'" in message
    assert "gaussian" in message and "gaussian_noise" in message and "jpeg_compression" in message


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_repr_and_pickle(name: str) -> None:
    """Readable reprs, and instances survive pickling (Ray ships them to workers)."""
    class_name = "".join(part.capitalize() for part in name.split("_")) + "Corruption"
    for engine in ("reference", "native"):
        perturbation = create_perturbation(name, engine=engine)
        assert repr(perturbation) == f"{class_name}(engine='{engine}')"
        restored = pickle.loads(pickle.dumps(perturbation))
        assert type(restored) is type(perturbation) and restored == perturbation
    assert create_perturbation(name) == create_perturbation(name, engine="reference")


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_engines_come_from_the_native_registry(name: str) -> None:
    cls = get_perturbation_class(name)
    assert issubclass(cls, Corruption)
    assert cls.engines == (
        (Engine.REFERENCE, Engine.NATIVE) if name in NATIVE_CORRUPTIONS else (Engine.REFERENCE,)
    )
    assert cls.native_default == (name in native_names(default_only=True))
    assert cls.resolve_engine(Engine.AUTO) is (
        Engine.NATIVE if cls.native_default else Engine.REFERENCE
    )
    assert cls.resolve_engine("reference") is Engine.REFERENCE
    # A string engine is accepted and held as the Engine it names.
    assert create_perturbation(name, engine="native").engine is Engine.NATIVE  # type: ignore[attr-defined]


def test_corruption_refuses_auto_and_unknown_engines() -> None:
    for engine in (Engine.AUTO, "auto", "fast"):
        with pytest.raises(
            PerturbationError, match=r"unknown corruption engine.*'reference', 'native'"
        ):
            create_perturbation("fog", engine=engine)
    with pytest.raises(PerturbationError, match=r"'fast'.*'auto', 'reference', 'native'"):
        get_perturbation_class("fog").resolve_engine("fast")  # type: ignore[attr-defined]


def test_a_corruption_without_a_native_engine_refuses_native() -> None:
    @dataclasses.dataclass(frozen=True, repr=False)
    class ReferenceOnly(Corruption):  # not registered: the real registry is left alone
        name: ClassVar[str] = "reference_only"

    assert ReferenceOnly.engines == (Engine.REFERENCE,)
    assert ReferenceOnly.resolve_engine(Engine.AUTO) is Engine.REFERENCE
    for ask in (
        lambda: ReferenceOnly.resolve_engine(Engine.NATIVE),
        lambda: ReferenceOnly(engine="native"),  # type: ignore[arg-type]  # a config's string
    ):
        with pytest.raises(
            PerturbationError, match="'reference_only' has no native engine"
        ) as error:
            ask()
        assert all(native in str(error.value) for native in native_names())


def test_severity_stays_an_int(images: Tensor) -> None:
    cls = get_perturbation_class("fog")
    assert cls.axis.column == "severity"
    for severity in (3, 3.0):
        checked = cls.validate_strength(severity)
        assert checked == 3 and type(checked) is int


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize("name", NOISES)
def test_noise_output_and_determinism(name: str, images: Tensor) -> None:
    noise = _perturbation(name)
    out = noise(images, 0.2, seed=7)
    _check_output(out, images)
    assert torch.equal(out, noise(images, 0.2, seed=7))
    assert not torch.equal(out, noise(images, 0.2, seed=8))
    assert not torch.equal(out, images)


@pytest.mark.parametrize("name", NOISES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_noise_keeps_dtype(name: str, dtype: torch.dtype, images: Tensor) -> None:
    _check_output(_perturbation(name)(images.to(dtype), 0.2, seed=7), images.to(dtype))


@pytest.mark.parametrize("name", NOISES)
def test_noise_strength_zero_is_clean(name: str, images: Tensor) -> None:
    assert torch.equal(_perturbation(name)(images, 0.0, seed=7), images)


@pytest.mark.parametrize("name", NOISES)
def test_noise_grows_with_strength(name: str, images: Tensor) -> None:
    noise = _perturbation(name)
    distances = [
        float((noise(images, strength, seed=3) - images).abs().mean())
        for strength in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
    ]
    assert all(a < b for a, b in itertools.pairwise(distances)), distances


@pytest.mark.parametrize(
    ("name", "expected_std"),
    [
        ("gaussian", 0.1),  # s
        ("shot", 0.5**0.5 * 0.1),  # √x·s at intensity x
        ("speckle", 0.5 * 0.1),  # x·s
        ("uniform", 0.1 / 3**0.5),  # the std of U(-s, s)
    ],
)
def test_noise_scale_matches_its_documentation(name: str, expected_std: float) -> None:
    """s = 0.1 on a mid-grey batch (far from the clipping bounds): the documented std."""
    grey = torch.full((8, 3, 32, 32), 0.5)
    delta = _perturbation(name)(grey, 0.1, seed=0) - grey
    assert float(delta.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(delta.std()) == pytest.approx(expected_std, rel=0.05)
    if name == "uniform":
        assert float(delta.abs().max()) <= 0.1 + 1e-6


def test_impulse_replaces_a_fraction_s_half_black_half_white() -> None:
    grey = torch.full((8, 3, 32, 32), 0.5)
    out = _perturbation("impulse")(grey, 0.2, seed=0)
    assert set(out.unique().tolist()) == {0.0, 0.5, 1.0}
    replaced = float((out != 0.5).float().mean())
    assert replaced == pytest.approx(0.2, abs=0.01)
    assert float((out == 0.0).float().mean()) == pytest.approx(0.1, abs=0.01)
    # Per element, as ImageNet-C: the channels of one pixel are replaced independently.
    channels_agree = (out != 0.5).all(dim=1) | (out == 0.5).all(dim=1)
    assert not bool(channels_agree.all())
    assert bool((_perturbation("impulse")(grey, 1.0, seed=0) != 0.5).all())  # s = 1: every one


@pytest.mark.parametrize("name", NOISES)
@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_noise_rejects_bad_epsilon(name: str, strength: float, images: Tensor) -> None:
    with pytest.raises(PerturbationError) as error:
        _perturbation(name)(images, strength, seed=0)
    message = str(error.value)
    assert repr(strength) in message and "0.0 ≤ epsilon ≤ 1.0" in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NOISES)
def test_noise_runs_on_cuda(name: str, images: Tensor) -> None:
    on_gpu = images.cuda()
    out = _perturbation(name)(on_gpu, 0.2, seed=7)
    _check_output(out, on_gpu)
    assert torch.equal(out, _perturbation(name)(on_gpu, 0.2, seed=7))


# ---------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_output_and_determinism(name: str, images: Tensor) -> None:
    corruption = _perturbation(name)
    batch = images[:3]
    for severity in (1, 5):
        out = corruption(batch, severity, seed=11)
        _check_output(out, batch)
        assert torch.equal(out, corruption(batch, severity, seed=11))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_seed_changes_output(name: str, images: Tensor) -> None:
    corruption = _perturbation(name)
    batch = images[:2]
    same = torch.equal(corruption(batch, 3, seed=1), corruption(batch, 3, seed=2))
    assert same == (name in DETERMINISTIC_CORRUPTIONS)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_of_an_image_ignores_the_rest_of_the_batch(name: str, images: Tensor) -> None:
    """Seeds are per (job seed, index): image i's result depends on image i and i only."""
    corruption = _perturbation(name)
    batch = images[:3]
    out = corruption(batch, 3, seed=5)
    other_first = torch.cat([images[3:4], batch[1:]])  # image 0 replaced
    assert torch.equal(corruption(other_first, 3, seed=5)[1:], out[1:])
    assert torch.equal(corruption(batch[:2], 3, seed=5), out[:2])  # a shorter batch: a prefix


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_equals_a_direct_imagecorruptions_call(name: str, images: Tensor) -> None:
    """Byte for byte what a user of imagecorruptions gets on the uint8 image, seeded the same
    way: numpy's global state seeded with the image's seed, and `seed=` where accepted."""
    seed, severity = 2024, 3
    batch = images[:2]
    ours = _perturbation(name)(batch, severity, seed=seed)
    for index in range(batch.shape[0]):
        image_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        as_uint8 = (batch[index].permute(1, 2, 0).numpy() * 255).round().clip(0, 255)
        np.random.seed(image_seed)
        keywords = {"seed": image_seed} if name in SEED_KEYWORD_CORRUPTIONS else {}
        direct = imagecorruptions.corrupt(
            as_uint8.astype(np.uint8), corruption_name=name, severity=severity, **keywords
        )
        expected = torch.from_numpy(direct.astype(np.float32) / 255).permute(2, 0, 1)
        assert torch.equal(ours[index], expected), index


def test_seed_keyword_corruptions_are_the_expected_ones() -> None:
    assert frozenset({"impulse_noise", "glass_blur"}) == SEED_KEYWORD_CORRUPTIONS


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_of_small_and_non_square_images(name: str, images: Tensor) -> None:
    """16×16 goes through the 32×32 upsampled path and comes back at 16×16; 32×48 as is."""
    corruption = _perturbation(name)
    small = torch.nn.functional.interpolate(images[:2], size=(16, 16), mode="area")
    out = corruption(small, 2, seed=3)
    _check_output(out, small)
    assert torch.equal(out, corruption(small, 2, seed=3))
    wide = torch.cat([images[:2], images[2:4, :, :, :16]], dim=3)  # (2, 3, 32, 48)
    _check_output(corruption(wide, 2, seed=3), wide)


def test_corruption_of_a_thin_image() -> None:
    """Only the short side is upsampled: 16×40 is corrupted at 32×40."""
    thin = make_shapes(2, seed=1).images[:, :, :16, :].repeat(1, 1, 1, 2)[..., :40]
    out = _perturbation("motion_blur")(thin, 3, seed=0)
    _check_output(out, thin)


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "frost"])
def test_corruption_restores_numpy_global_state(name: str, images: Tensor) -> None:
    np.random.seed(123)
    untouched = np.random.random(4)
    np.random.seed(123)
    _perturbation(name)(images[:2], 3, seed=9)
    assert np.array_equal(np.random.random(4), untouched)


@pytest.mark.parametrize("severity", [0, 6, 2.5, True])
def test_corruption_rejects_bad_severity(severity: float, images: Tensor) -> None:
    with pytest.raises(PerturbationError) as error:
        _perturbation("gaussian_noise")(images, severity, seed=0)
    message = str(error.value)
    assert f"severity {severity!r}" in message and "1, 2, 3, 4, 5" in message


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_rejects_severity_zero(name: str, images: Tensor) -> None:
    with pytest.raises(PerturbationError, match="valid severities"):
        _perturbation(name)(images, 0, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_corruption_returns_to_the_input_device(images: Tensor) -> None:
    on_gpu = images[:2].cuda()
    out = _perturbation("gaussian_noise")(on_gpu, 3, seed=0)
    _check_output(out, on_gpu)
    assert torch.equal(out.cpu(), _perturbation("gaussian_noise")(images[:2], 3, seed=0))
