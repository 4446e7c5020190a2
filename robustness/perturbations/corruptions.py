"""The 19 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), through `imagecorruptions`.

One registered class per name in `imagecorruptions.get_corruption_names("all")` — the 15 common
corruptions and the 4 validation ones — generated from that list, so the registry follows the
package. Each class only names its corruption; the shared maths is `corrupt_images`:

1. **uint8 boundary.** imagecorruptions takes uint8 HWC images in [0, 255]; we convert there and
   only there, exactly as a user of the package would: `(x·255).round().clip(0, 255)` to uint8,
   and the corrupted uint8 image back as float32 `/ 255`. Everything around it is NCHW float.
2. **Seeding per image.** Image `i` of a batch gets its own seed `image_seed(seed, i)`, derived
   from the job's seed and its index with `np.random.SeedSequence`, so a rerun is byte-identical
   and an image's result does not depend on the other images in the batch. Most corruptions draw
   from numpy's *global* random state, so we seed it with `np.random.seed(image_seed)`;
   `impulse_noise` and `glass_blur` instead take a `seed=` keyword (and draw a fresh, unseeded,
   seed when it is missing — a rerun would differ), so they get `seed=image_seed` too. Which
   functions accept the keyword is read from their signatures once, at import. numpy's global
   state is saved before and restored after every batch, so other code that draws from it is not
   disturbed by us.
3. **Small images.** imagecorruptions refuses images with a side under 32 pixels. Such an image is
   upsampled (bilinear, antialiased) so that each side is at least 32 — a 16×16 image becomes
   32×32, a 16×48 one 32×48 — corrupted, and downsampled back to its own size (area average).
   The severity is thus that of the 32-pixel image, seen at the smaller size. Sides ≥ 32,
   square or not, are passed as they are.

The result is float in [0, 1], NCHW, in the input's dtype (float32 for the usual float32 batch)
and on the input's device. The work happens on the CPU in numpy, one image at a time, which is
why these jobs are the slow ones (see the per-image timings in the tests' report).

That is the reference engine. A corruption's `engine` may instead be `Engine.NATIVE`, the batched
torch port in `robustness.perturbations.native`; each class says which engines it has
(`engines`) and whether the native one passed the fidelity gate (`native_default`), and
`resolve_engine` turns a config's `auto` into one of the two.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import imagecorruptions
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from iamt.vocabulary import Engine, Family, StrengthAxis
from robustness.catalogue import resolve_engine
from robustness.perturbations.base import (
    ImagePerturbation,
    PerturbationError,
    Strength,
    register_perturbation,
)

# The native package registers its corruptions on import and never imports this module, so
# importing it here, at the top, makes no cycle.
from robustness.perturbations.native import NATIVE_CORRUPTIONS, corrupt_natively

#: Every corruption, in the package's order: the 15 common ones, then the 4 validation ones.
CORRUPTION_NAMES: tuple[str, ...] = tuple(imagecorruptions.get_corruption_names("all"))
# ImageNet-C's mCE averages the 15 benchmark corruptions; the other 4 are held-out validation
# corruptions, reported apart (Hendrycks & Dietterich 2019).
BENCHMARK_CORRUPTIONS: tuple[str, ...] = tuple(imagecorruptions.get_corruption_names("common"))
VALIDATION_CORRUPTIONS: tuple[str, ...] = tuple(imagecorruptions.get_corruption_names("validation"))

#: The corruptions whose function takes a `seed=` keyword instead of numpy's global state
#: (`impulse_noise`, `glass_blur` in imagecorruptions-imaug 1.1.5).
SEED_KEYWORD_CORRUPTIONS: frozenset[str] = frozenset(
    name
    for name in CORRUPTION_NAMES
    if "seed" in inspect.signature(imagecorruptions.corruption_dict[name]).parameters
)

#: imagecorruptions' smallest accepted side; smaller images are resized around the call.
MIN_SIDE = 32


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` in a job seeded with `seed`: a 32-bit value (what both
    `np.random.seed` and numba's seed accept), independent of the batch's other images.

    `seed % 2**63` matches the torch generator's seed in `base.make_generator`, so two job seeds
    that give the same torch stream give the same corruptions too.
    """
    return int(np.random.SeedSequence([seed % 2**63, index]).generate_state(1)[0])


def corrupt_uint8(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt one uint8 (H, W, 3) image, H, W ≥ 32, seeding every source of randomness it uses.

    Draws from numpy's global state: the caller saves and restores it (`corrupt_images` does).
    """
    np.random.seed(seed)
    keywords = {"seed": seed} if name in SEED_KEYWORD_CORRUPTIONS else {}
    # frost reads one of its six texture files from disk on every call; fine at this scale
    # (the native engine caches them). glass_blur JIT-compiles its pixel shuffle with
    # numba on its first call in a process (~5 s) and seeds numba's own generator itself.
    corrupted: np.ndarray = imagecorruptions.corrupt(
        image, corruption_name=name, severity=severity, **keywords
    )
    return corrupted


def corrupt_images(images: Tensor, name: str, severity: int, seed: int) -> Tensor:
    """images (N, 3, H, W) float in [0, 1] -> the same images corrupted by `name` at `severity`.

    See the module docstring for the uint8 boundary, the per-image seeds and the resizing of
    images smaller than 32 pixels.
    """
    if name not in imagecorruptions.corruption_dict:
        raise PerturbationError(
            f"unknown corruption {name!r}; valid are {', '.join(CORRUPTION_NAMES)}"
        )
    count, _, height, width = images.shape
    work = images.detach().to(device="cpu", dtype=torch.float32)  # (N, 3, H, W)
    size = (max(height, MIN_SIDE), max(width, MIN_SIDE))
    resized = size != (height, width)
    if resized:
        work = F.interpolate(work, size=size, mode="bilinear", align_corners=False, antialias=True)
    hwc = work.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H', W', 3)
    as_uint8 = (hwc * 255).round().clip(0, 255).astype(np.uint8)
    corrupted = np.empty(as_uint8.shape, dtype=np.float32)  # (N, H', W', 3)
    global_state = np.random.get_state()
    try:
        for index in range(count):
            out = corrupt_uint8(as_uint8[index], name, severity, image_seed(seed, index))
            if out.shape != as_uint8.shape[1:]:
                raise AssertionError(
                    f"imagecorruptions' {name} returned shape {out.shape} for an image of "
                    f"shape {as_uint8.shape[1:]}"
                )
            corrupted[index] = out.astype(np.float32) / 255
    finally:
        np.random.set_state(global_state)
    result = torch.from_numpy(corrupted).permute(0, 3, 1, 2)  # (N, 3, H', W')
    if resized:
        result = F.interpolate(result, size=(height, width), mode="area")
    return result.contiguous().to(device=images.device, dtype=images.dtype)


#: The engines a corruption instance can run on; `Engine.AUTO` is a config choice, resolved
#: per corruption by `Corruption.resolve_engine` before an instance is made.
SERVING_ENGINES: tuple[Engine, ...] = (Engine.REFERENCE, Engine.NATIVE)


# repr=False here and below: Perturbation.__repr__ prints the engine as the string a config
# writes, `FogCorruption(engine='native')`, as the dataclass repr did when it was a string.
@dataclass(frozen=True, repr=False)
class Corruption(ImagePerturbation):
    """An ImageNet-C corruption at severity 1..5; subclasses only set `name` and the engine
    metadata. `engine` picks the reference package or the native torch port
    (`robustness.perturbations.native`)."""

    family: ClassVar[Family] = Family.CORRUPTION
    axis: ClassVar[StrengthAxis] = StrengthAxis.SEVERITY
    min_strength: ClassVar[float] = 1
    max_strength: ClassVar[float] = 5
    # Filled from NATIVE_CORRUPTIONS when the classes are generated: the engines this corruption
    # has, and whether its native entry passed the fidelity gate (served under `engine: auto`).
    engines: ClassVar[tuple[Engine, ...]] = (Engine.REFERENCE,)
    native_default: ClassVar[bool] = False

    engine: Engine = Engine.REFERENCE

    def __post_init__(self) -> None:
        if self.engine not in SERVING_ENGINES:
            shown = self.engine.value if isinstance(self.engine, Engine) else self.engine
            raise PerturbationError(
                f"{self.name}: unknown corruption engine {shown!r}; "
                f"valid: {[engine.value for engine in SERVING_ENGINES]}"
                + (" ('auto' is resolved by resolve_engine first)" if shown == "auto" else "")
            )
        # Frozen: normalise a config's "native" string to Engine.NATIVE, once, here.
        object.__setattr__(self, "engine", self.resolve_engine(self.engine))

    @classmethod
    def resolve_engine(cls, choice: Engine | str) -> Engine:
        """The engine that serves `choice` for this corruption: `auto` is native where the
        native entry passed the fidelity gate and reference elsewhere; `native` must exist."""
        return resolve_engine(cls.name, cls.engines, cls.native_default, choice)

    def _perturb(
        self, images: Tensor, strength: Strength, generator: torch.Generator, seed: int
    ) -> Tensor:
        assert isinstance(strength, int), "validate_strength gives an int severity"
        if self.engine is Engine.NATIVE:
            return corrupt_natively(images, self.name, strength, seed)
        # The package draws from numpy, not torch: `seed`, not `generator`, drives it.
        return corrupt_images(images, self.name, strength, seed)


def _class_name(name: str) -> str:
    """`gaussian_noise` -> `GaussianNoiseCorruption`, for readable reprs and pickling."""
    return "".join(part.capitalize() for part in name.split("_")) + "Corruption"


def _make_corruption_class(name: str) -> type[Corruption]:
    """Build, register and publish (as a module attribute, so instances pickle for Ray) the
    frozen dataclass of one corruption."""
    seeding = (
        "its `seed=` keyword and numpy's global state"
        if name in SEED_KEYWORD_CORRUPTIONS
        else "numpy's global state"
    )
    native = NATIVE_CORRUPTIONS.get(name) if name in NATIVE_CORRUPTIONS else None
    namespace: dict[str, Any] = {
        "name": name,
        "engines": SERVING_ENGINES if native is not None else (Engine.REFERENCE,),
        "native_default": native is not None and native.default,
        "__module__": __name__,
        "__qualname__": _class_name(name),
        "__doc__": f"ImageNet-C `{name}` via imagecorruptions, seeded per image through {seeding}.",
    }
    bare: type[Corruption] = type(_class_name(name), (Corruption,), namespace)
    cls = dataclass(frozen=True, repr=False)(bare)
    register_perturbation(cls)
    globals()[cls.__name__] = cls
    return cls


CORRUPTION_CLASSES: dict[str, type[Corruption]] = {
    name: _make_corruption_class(name) for name in CORRUPTION_NAMES
}

__all__ = [
    "BENCHMARK_CORRUPTIONS",
    "CORRUPTION_CLASSES",
    "CORRUPTION_NAMES",
    "MIN_SIDE",
    "SEED_KEYWORD_CORRUPTIONS",
    "SERVING_ENGINES",
    "VALIDATION_CORRUPTIONS",
    "Corruption",
    "corrupt_images",
    "corrupt_uint8",
    "image_seed",
]
