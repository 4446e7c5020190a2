"""The project's fixed vocabulary: families, strength axes, engines and reserved names.

A tiny module with no imports beyond the standard library (RobustBench's `model_zoo/enums.py`
is the model), so that every layer, the dashboard included, spells these words the same way
without pulling in torch. Strings from a config or a CSV become these Enums where they enter.
"""

from __future__ import annotations

from enum import StrEnum

NORMAL = "normal"  # the variant with the identity transform: the trained model as it is
IDENTITY = "identity"  # the spec of the identity mask transform
# With search.evaluate_front, the search's other Pareto-front members join the test sweep as
# front-1, front-2, … in order of their validation clean cost.
FRONT_VARIANT_PREFIX = "front-"
NO_PERTURBATION = "none"  # the perturbation column of clean rows


class DatasetName(StrEnum):
    """The datasets a config may name (`data.name`); the loaders live in iamt/data/."""

    SHAPES = "shapes"
    DIGITS = "digits"
    CELEBA = "celeba"
    CIFAR10 = "cifar10"
    FOLDER = "folder"


class Family(StrEnum):
    """What kind of perturbation produced a row (`results.csv`'s `family` column)."""

    CLEAN = "clean"
    NOISE = "noise"
    CORRUPTION = "corruption"
    ADVERSARIAL = "adversarial"
    TRANSFER = "transfer"  # adversarials crafted on one variant, evaluated on another


# The families whose paired differences answer "does emphasis help?": the verdict reads them,
# and the Holm adjustment counts their tests.
VERDICT_FAMILIES = (Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL, Family.TRANSFER)


class StrengthAxis(StrEnum):
    """How a perturbation's strength is measured; it also names the column that holds it."""

    SEVERITY = "severity"  # an integer 1..5 (ImageNet-C)
    EPSILON = "epsilon"  # a norm bound, or a noise scale, in [0, 1] pixel units

    @property
    def column(self) -> str:
        """The results.csv / summary.csv column of a strength on this axis."""
        return self.value

    @classmethod
    def of_family(cls, family: Family | str) -> StrengthAxis:
        """The axis of a family's strengths: corruptions have severities, the rest ε."""
        return cls.SEVERITY if Family(family) is Family.CORRUPTION else cls.EPSILON


SEVERITIES = (1, 2, 3, 4, 5)  # the ImageNet-C severities


class Engine(StrEnum):
    """Which implementation corrupts images. `auto` is a config choice only: it resolves, per
    corruption, to `native` where that corruption's native entry passed the fidelity gate and
    to `reference` elsewhere."""

    AUTO = "auto"
    REFERENCE = "reference"  # imagecorruptions, one image at a time on the CPU (numpy)
    NATIVE = "native"  # the batched torch port, on the batch's device


class Norm(StrEnum):
    """The norm an attack's ε bounds."""

    LINF = "linf"
    L2 = "l2"


# The checks of the adversarial sanity checklist (robustness/sanity.py), in their order; the
# summary's `sanity_<check>` columns.
SANITY_CHECKS = (
    "monotone_in_epsilon",
    "pgd_beats_fgsm",
    "reaches_full_success",
    "whitebox_beats_transfer",
    "no_gradient_masking",
)
# The per-variant gradient-masking flags (robustness/sanity.py `masking_flags`, after AutoAttack's
# and RobustBench's), also `sanity_<check>` columns; `sanity_all` reads both tuples.
MASKING_CHECKS = (
    "nonzero_gradients",
    "comparable_logit_scale",
    "minimisation_agrees_with_fgsm",
)
# The checks whose failure marks a variant's adversarial numbers "unreliable" in the verdict, as
# RobustBench marks models: the signs of gradient masking, not of a weak attack budget.
UNRELIABLE_IF_FAILED = (
    "monotone_in_epsilon",
    "whitebox_beats_transfer",
    "no_gradient_masking",
    *MASKING_CHECKS,
)


class StudyVerdict(StrEnum):
    """A study's verdict on one grid point × variant × family × attribute (robustness/study.py):
    its Holm-adjusted p below 0.05 and the effect's sign, else no consistent effect."""

    HELPS = "helps"
    HURTS = "hurts"
    NO_EFFECT = "no consistent effect"


POOLED_ATTRIBUTE = "all"  # a study row pooled over attributes
