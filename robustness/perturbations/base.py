"""One interface for every perturbation, in the style of foolbox's `attacks/base.py`.

The base classes own the shared steps — validate the input batch and the strength, derive the
random generator from the job's seed, clip to [0, 1], check the output's shape and range — and
each registered subclass writes only its maths:

- `ImagePerturbation._perturb(images, strength, generator, seed)` for model-independent noise
  and corruptions: generated once per job, then evaluated by every variant;
- `Attack._attack(model, images, labels, epsilons, generator)` for adversarial attacks, run
  against each variant itself. As in foolbox, an attack is either a `FixedEpsilonAttack` (one
  adversarial per ε bound) or a `MinimisationAttack` (the smallest adversarial perturbation it
  finds, whose outcome always carries per-sample `distances`).

Every class is registered by name (`@register_perturbation`) in `PERTURBATIONS`, with its
family and its strength axis, so tests parametrized over `list_perturbations()` cover a new
entry for free (as timm's `@register_model` does for models). This module registers nothing
itself: `robustness/perturbations/__init__.py` imports the modules that do, so importing the
package (or any module in it) is enough to see every entry.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from iamt.registry import Registry
from iamt.vocabulary import Family, Norm, StrengthAxis
from robustness.catalogue import (
    PerturbationError,
    PerturbationSpec,
    Strength,
    check_against_catalogue,
    check_positive_parameter,
    check_strength,
    unknown_perturbation,
)

PERTURBATIONS: Registry[type[Perturbation]] = Registry("perturbation", PerturbationError)


PerturbationType = TypeVar("PerturbationType", bound="type[Perturbation]")


def register_perturbation(cls: PerturbationType) -> PerturbationType:
    """Class decorator: register `cls` under `cls.name` (a second `cls.name` raises
    `iamt.registry.DuplicateEntryError`), after checking it against its entry in the
    torch-free catalogue (`robustness/catalogue.py`), which the config reads."""
    check_against_catalogue(spec_of(cls))
    PERTURBATIONS.add(cls.name, cls)
    return cls


def spec_of(cls: type[Perturbation]) -> PerturbationSpec:
    """A class's metadata in the catalogue's terms, to compare the two."""
    names = cls.parameter_names()
    defaults: dict[str, Any] = {}
    if dataclasses.is_dataclass(cls):
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.name in names}
    return PerturbationSpec(
        name=cls.name,
        family=cls.family,
        axis=cls.axis,
        min_strength=cls.min_strength,
        max_strength=cls.max_strength,
        norm=getattr(cls, "norm", None),
        parameters=defaults,
        engines=getattr(cls, "engines", ()),
        native_default=getattr(cls, "native_default", False),
    )


def list_perturbations(family: Family | None = None) -> list[str]:
    """The registered names, sorted; of one family only when `family` is given."""
    return [n for n, c in PERTURBATIONS.items() if family is None or c.family is family]


def get_perturbation_class(name: str) -> type[Perturbation]:
    """The class registered as `name`; an unknown name raises naming the valid ones by family."""
    if name not in PERTURBATIONS:
        # More helpful than the registry's flat list: the valid names grouped by family.
        raise unknown_perturbation(name)
    return PERTURBATIONS.get(name)


def create_perturbation(name: str, **params: Any) -> Perturbation:
    """An instance of perturbation `name` with keyword hyperparameters `params`."""
    cls = get_perturbation_class(name)
    try:
        return cls(**params)
    except TypeError as error:  # an unknown keyword: say which ones exist
        raise PerturbationError(
            f"bad parameters {params} for {name!r}: {error}; "
            f"valid parameters: {', '.join(cls.parameter_names()) or 'none'}"
        ) from None


def check_images(images: Tensor) -> None:
    """Raise unless `images` is a finite float (N, 3, H, W) batch in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise PerturbationError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise PerturbationError(f"images must be float in [0, 1], got dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise PerturbationError("images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise PerturbationError(f"images must lie in [0, 1], got values in [{low}, {high}]")


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed % 2**63)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Attacks need gradients with respect to the input only. Without this, every attack step
    also computes (and accumulates) gradients for every weight: measured ~20% slower PGD."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


class Perturbation(ABC):
    """Class attributes every registered perturbation declares. `cls.axis.column` names the
    results column that holds its strengths."""

    name: ClassVar[str]
    family: ClassVar[Family]
    axis: ClassVar[StrengthAxis]
    # The strengths a user may ask for: a closed interval (epsilon) or 1..5 (severity).
    min_strength: ClassVar[float] = 0.0
    max_strength: ClassVar[float] = 1.0

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The keyword hyperparameters (dataclass fields; ClassVars are not fields)."""
        if not dataclasses.is_dataclass(cls):
            return []
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    @classmethod
    def validate_strength(cls, strength: float) -> Strength:
        """The one check of a strength: an `int` severity, or a `float` ε, else raise naming
        the bad value and the valid range."""
        return check_strength(cls.name, cls.axis, cls.min_strength, cls.max_strength, strength)

    def __repr__(self) -> str:
        params = ", ".join(f"{p}={_repr_value(getattr(self, p))}" for p in self.parameter_names())
        return f"{type(self).__name__}({params})"


def _repr_value(value: Any) -> str:
    # An Enum parameter (a corruption's engine) reads as the string a config would write.
    return repr(value.value) if isinstance(value, Enum) else repr(value)


class ImagePerturbation(Perturbation):
    """A model-independent perturbation: noise or a corruption."""

    def __call__(self, images: Tensor, strength: float, *, seed: int) -> Tensor:
        """images (N, 3, H, W) in [0, 1] -> perturbed images, same shape, in [0, 1]."""
        check_images(images)
        checked = self.validate_strength(strength)
        generator = make_generator(seed, images.device)
        with torch.no_grad():  # a perturbation is data, not part of any graph
            perturbed = self._perturb(images, checked, generator, seed).clamp(0.0, 1.0)
        if perturbed.shape != images.shape or perturbed.dtype != images.dtype:
            raise AssertionError(
                f"{self.name} returned {tuple(perturbed.shape)} {perturbed.dtype}, "
                f"expected {tuple(images.shape)} {images.dtype}"
            )
        return perturbed

    @abstractmethod
    def _perturb(
        self, images: Tensor, strength: Strength, generator: torch.Generator, seed: int
    ) -> Tensor:
        """The maths, given a validated strength. `generator` is seeded from the job; `seed`
        is there for code that needs its own random state (e.g. numpy-based corruptions)."""


@dataclass
class AttackOutcome:
    """What an attack found, for one model and one batch.

    `adversarials[eps]` (N, 3, H, W) and `success[eps]` (N,) bool per requested ε; for
    minimisation attacks also `distances` (N,): the smallest perturbation found (inf where the
    attack failed), measured in the attack's norm. Fixed-ε attacks leave it None.
    """

    adversarials: dict[float, Tensor]
    success: dict[float, Tensor]
    distances: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Attack(Perturbation):
    """An adversarial attack against one single-logit model with inputs in [0, 1].

    The common base: registered attacks derive from `FixedEpsilonAttack` or
    `MinimisationAttack`, which say what their outcome holds."""

    family: ClassVar[Family] = Family.ADVERSARIAL
    axis: ClassVar[StrengthAxis] = StrengthAxis.EPSILON
    norm: ClassVar[Norm]
    max_strength: ClassVar[float] = 16.0  # an L2 bound in [0, 1] pixel units may exceed 1

    def __post_init__(self) -> None:
        # Every attack hyperparameter (steps, step sizes, overshoot, batch size) is a positive
        # number of the declared kind: `steps=2.5` or `steps=True` is a mistake, not a 2.
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]
            integral = isinstance(spec.default, int)
            value = getattr(self, spec.name)
            check_positive_parameter(self.name, spec.name, value, integral=integral)

    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        epsilons: Sequence[float],
        *,
        seed: int,
    ) -> AttackOutcome:
        check_images(images)
        if labels.shape != (images.shape[0],):
            raise PerturbationError(f"labels must be (N,), got {tuple(labels.shape)}")
        if not epsilons:
            raise PerturbationError(f"{self.name}: the epsilon list is empty")
        checked = [self.validate_strength(eps) for eps in epsilons]
        generator = make_generator(seed, images.device)
        # foolbox and AutoAttack draw from torch's global generator: seed it for this attack
        # only, and give the caller its random state back afterwards.
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), frozen_parameters(model):
            torch.manual_seed(seed)
            outcome = self._attack(model, images, labels, checked, generator)
        for eps, adversarial in outcome.adversarials.items():
            if adversarial.shape != images.shape:
                raise AssertionError(f"{self.name}: adversarials at eps={eps} changed shape")
            outcome.adversarials[eps] = adversarial.clamp(0.0, 1.0)
        self._check_distances(outcome, len(images))
        return outcome

    @abstractmethod
    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        epsilons: Sequence[float],
        generator: torch.Generator,
    ) -> AttackOutcome:
        """The maths: craft adversarials for every ε."""

    @abstractmethod
    def _check_distances(self, outcome: AttackOutcome, count: int) -> None:
        """Raise AssertionError unless `outcome.distances` is what this kind of attack gives."""


class FixedEpsilonAttack(Attack):
    """An attack bounded by each ε in turn (FGSM, PGD, AutoAttack): one adversarial per ε and
    no distances (foolbox's `FixedEpsilonAttack`)."""

    def _check_distances(self, outcome: AttackOutcome, count: int) -> None:
        if outcome.distances is not None:
            raise AssertionError(f"{self.name}: a fixed-epsilon attack reported distances")


class MinimisationAttack(Attack):
    """An attack that looks for the smallest adversarial perturbation (DeepFool, C&W, FMN,
    Boundary; foolbox's minimisation attacks). Its outcome always carries `distances` (N,),
    inf where it found nothing; `adversarials[eps]` is that result restricted to each ε."""

    def _check_distances(self, outcome: AttackOutcome, count: int) -> None:
        if outcome.distances is None or outcome.distances.shape != (count,):
            raise AssertionError(f"{self.name}: a minimisation attack must report (N,) distances")
