"""Perturbations: noise, ImageNet-C corruptions and adversarial attacks, behind one registry.

Importing the package registers every perturbation (timm's habit): `base` defines the registry
and the interfaces, then the modules that fill it are imported here, once. No module calls back
into the package to trigger registration, so there is no import cycle.
"""

from iamt.vocabulary import Family, StrengthAxis
from robustness.catalogue import catalogue_names
from robustness.perturbations.base import (
    PERTURBATIONS,
    Attack,
    AttackOutcome,
    FixedEpsilonAttack,
    ImagePerturbation,
    MinimisationAttack,
    Perturbation,
    PerturbationError,
    create_perturbation,
    get_perturbation_class,
    list_perturbations,
    register_perturbation,
)

# isort: split
# Then the modules that register: their @register_perturbation decorators run on import.
from robustness.perturbations import attacks, corruptions, noise  # noqa: F401
from robustness.perturbations.corruptions import Corruption

# Every class checked its metadata against the catalogue as it registered; the names must
# match too, so that the config (which reads only the catalogue) knows exactly these.
if PERTURBATIONS.names() != catalogue_names():
    raise AssertionError(
        "the registered perturbations and robustness/catalogue.py differ: "
        f"{sorted(set(PERTURBATIONS.names()) ^ set(catalogue_names()))}"
    )

__all__ = [
    "PERTURBATIONS",
    "Attack",
    "AttackOutcome",
    "Corruption",
    "Family",
    "FixedEpsilonAttack",
    "ImagePerturbation",
    "MinimisationAttack",
    "Perturbation",
    "PerturbationError",
    "StrengthAxis",
    "create_perturbation",
    "get_perturbation_class",
    "list_perturbations",
    "register_perturbation",
]
