"""All 19 ImageNet-C corruptions natively in torch: batched, on the batch's device.

See `registry.py` for the contract and the shared steps; each module writes only the maths of
its corruptions, with the reference's (imagecorruptions-imaug) severity constants.
"""

# The modules that register (their @register_native decorators run on import).
from robustness.perturbations.native import (  # noqa: F401
    blur,
    digital,
    noise_corruptions,
    weather,
)
from robustness.perturbations.native.registry import (
    NATIVE_CORRUPTIONS,
    Fidelity,
    NativeCorruption,
    corrupt_natively,
    native_names,
    register_native,
)

__all__ = [
    "NATIVE_CORRUPTIONS",
    "Fidelity",
    "NativeCorruption",
    "corrupt_natively",
    "native_names",
    "register_native",
]
