"""Perturbations: noise, ImageNet-C corruptions and adversarial attacks, behind one registry."""

from robustness.perturbations.base import (
    PERTURBATIONS,
    Attack,
    AttackOutcome,
    Family,
    ImagePerturbation,
    Perturbation,
    PerturbationError,
    StrengthAxis,
    create_perturbation,
    get_perturbation_class,
    list_perturbations,
    register_perturbation,
)

__all__ = [
    "PERTURBATIONS",
    "Attack",
    "AttackOutcome",
    "Family",
    "ImagePerturbation",
    "Perturbation",
    "PerturbationError",
    "StrengthAxis",
    "create_perturbation",
    "get_perturbation_class",
    "list_perturbations",
    "register_perturbation",
]
