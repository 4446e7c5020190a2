"""All 19 ImageNet-C corruptions natively in torch: batched, on the batch's device.

See `registry.py` for the contract and the shared steps; each module writes only the maths of
its corruptions, with the reference's (imagecorruptions-imaug) severity constants.
"""

from robustness.perturbations.native import blur, digital, noise, weather  # noqa: F401 (register)
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
