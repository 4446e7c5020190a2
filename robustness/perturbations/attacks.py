"""Adversarial attacks: foolbox 3 for the gradient, minimisation and decision-based attacks,
and `pyautoattack` for AutoAttack (standard version: APGD-CE, APGD-T, FAB-T, Square).

Every attack runs against one *single-logit* model: a multi-attribute AttentionNet (or its
emphasized view) is attacked one attribute at a time through `attribute_view(model, a)`.
Normalization lives inside the model, so the bounds are always (0, 1). Epsilons are in
[0, 1] pixel units: an L∞ bound, or an L2 norm over the whole (3, H, W) image.

Step sizes are set explicitly to 2.5·ε/steps (Madry et al.'s rule of thumb): with foolbox's
default relative step size, 10-step PGD travels only 0.33·ε and was weaker than FGSM here.

| name            | norm | kind         | notes                                                |
|-----------------|------|--------------|------------------------------------------------------|
| fgsm            | L∞   | fixed ε      | one signed-gradient step                             |
| linf_pgd        | L∞   | fixed ε      | random start, `steps` steps of 2.5·ε/steps           |
| l2_pgd          | L2   | fixed ε      | as above, in L2                                      |
| linf_bim        | L∞   | fixed ε      | basic iterative method (PGD without random start)    |
| l2_deepfool     | L2   | minimisation | reports per-sample distances                         |
| l2_cw           | L2   | minimisation | Carlini-Wagner                                       |
| linf_fmn        | L∞   | minimisation | fast minimum-norm                                    |
| l2_fmn          | L2   | minimisation | fast minimum-norm                                    |
| boundary        | L2   | minimisation | decision-based: checks for gradient masking          |
| autoattack_linf | L∞   | fixed ε      | RobustBench's standard AutoAttack; headline number   |
| autoattack_l2   | L2   | fixed ε      | as above, in L2                                      |

The kind is the class an attack derives from, as in foolbox: `FixedEpsilonAttack` (one
adversarial per ε) or `MinimisationAttack` (the smallest adversarial found, and its distance).
`FoolboxAttack` holds the shared foolbox wrapping; `FoolboxFixedEpsilonAttack` and
`FoolboxMinimisationAttack` add what each kind returns, so nothing branches on the kind.
"""

from __future__ import annotations

import logging
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import foolbox as fb
import torch
from torch import Tensor, nn

from iamt.vocabulary import Norm
from robustness.perturbations.base import (
    Attack,
    AttackOutcome,
    FixedEpsilonAttack,
    MinimisationAttack,
    register_perturbation,
)

# 2.5 · ε / steps per step: enough travel to reach any corner of the ε-ball and come back.
STEP_FACTOR = 2.5


class AttributeView(nn.Module):
    """The logits of one attribute of a multi-attribute model: images (B, 3, H, W) -> (B, K_a)."""

    def __init__(self, model: nn.Module, attribute: int) -> None:
        super().__init__()
        self.model = model
        self.attribute = attribute

    def forward(self, images: Tensor) -> Tensor:
        logits: Tensor = self.model(images).logits[self.attribute]
        return logits


def attribute_view(model: nn.Module, attribute: int) -> AttributeView:
    return AttributeView(model, attribute).eval()


def predict(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    with torch.no_grad():
        return torch.cat(
            [model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]
        )


def _norms(delta: Tensor, norm: Norm) -> Tensor:
    """(N,) norms of a batch of perturbations (N, 3, H, W), over the whole image."""
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == Norm.LINF else flat.norm(dim=1)


class FoolboxAttack(Attack):
    """The shared foolbox wrapping: the model as a `fb.PyTorchModel` on (0, 1), the attack
    called once for every ε, and the per-ε adversarials and success flags collected. Concrete
    attacks derive from `FoolboxFixedEpsilonAttack` or `FoolboxMinimisationAttack`."""

    @abstractmethod
    def _foolbox(self) -> Any:
        """The configured foolbox attack object."""

    @staticmethod
    def _fmodel(model: nn.Module, images: Tensor) -> Any:
        return fb.PyTorchModel(model.eval(), bounds=(0.0, 1.0), device=images.device)

    def _run_foolbox(
        self, model: nn.Module, images: Tensor, labels: Tensor, epsilons: Sequence[float]
    ) -> tuple[list[Tensor], AttackOutcome]:
        """foolbox's raw (unrestricted) adversarials per ε, and the outcome without distances."""
        fmodel = self._fmodel(model, images)
        raw, clipped, success = self._foolbox()(fmodel, images, labels, epsilons=list(epsilons))
        outcome = AttackOutcome(
            adversarials={eps: adv.detach() for eps, adv in zip(epsilons, clipped, strict=True)},
            success={eps: s.detach().cpu() for eps, s in zip(epsilons, success, strict=True)},
        )
        return raw, outcome


class FoolboxFixedEpsilonAttack(FoolboxAttack, FixedEpsilonAttack):
    """A foolbox attack bounded by each ε: its outcome is foolbox's, per ε."""

    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        epsilons: Sequence[float],
        generator: torch.Generator,
    ) -> AttackOutcome:
        return self._run_foolbox(model, images, labels, epsilons)[1]


class FoolboxMinimisationAttack(FoolboxAttack, MinimisationAttack):
    """A foolbox minimisation attack: besides the per-ε results, the distance of the smallest
    adversarial it found for each sample (inf where it found none)."""

    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        epsilons: Sequence[float],
        generator: torch.Generator,
    ) -> AttackOutcome:
        raw, outcome = self._run_foolbox(model, images, labels, epsilons)
        # Minimisation attacks return the same unrestricted adversarial for every ε.
        outcome.distances = self._distances(model, raw[0].detach(), images, labels)
        return outcome

    def _distances(self, model: nn.Module, found: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        """(N,) on the CPU: the norm of `found - images` where `found` fools the model, else inf."""
        fooled = (predict(model, found) != labels) & ~self._gave_up(found, images)
        distances = _norms(found - images, self.norm)
        return torch.where(fooled, distances, torch.inf).cpu()

    def _gave_up(self, found: Tensor, images: Tensor) -> Tensor:
        """(N,) bool: samples where the attack returned a placeholder instead of a result."""
        return torch.zeros(len(images), dtype=torch.bool, device=images.device)


@register_perturbation
@dataclass(frozen=True)
class FGSM(FoolboxFixedEpsilonAttack):
    name: ClassVar[str] = "fgsm"
    norm: ClassVar[Norm] = Norm.LINF
    max_strength: ClassVar[float] = 1.0

    def _foolbox(self) -> Any:
        return fb.attacks.LinfFastGradientAttack(random_start=False)


@register_perturbation
@dataclass(frozen=True)
class LinfPGD(FoolboxFixedEpsilonAttack):
    name: ClassVar[str] = "linf_pgd"
    norm: ClassVar[Norm] = Norm.LINF
    max_strength: ClassVar[float] = 1.0
    steps: int = 10

    def _foolbox(self) -> Any:
        return fb.attacks.LinfPGD(steps=self.steps, rel_stepsize=STEP_FACTOR / self.steps)


@register_perturbation
@dataclass(frozen=True)
class L2PGD(FoolboxFixedEpsilonAttack):
    name: ClassVar[str] = "l2_pgd"
    norm: ClassVar[Norm] = Norm.L2
    steps: int = 10

    def _foolbox(self) -> Any:
        return fb.attacks.L2PGD(steps=self.steps, rel_stepsize=STEP_FACTOR / self.steps)


@register_perturbation
@dataclass(frozen=True)
class LinfBIM(FoolboxFixedEpsilonAttack):
    name: ClassVar[str] = "linf_bim"
    norm: ClassVar[Norm] = Norm.LINF
    max_strength: ClassVar[float] = 1.0
    steps: int = 10

    def _foolbox(self) -> Any:
        return fb.attacks.LinfBasicIterativeAttack(
            steps=self.steps, rel_stepsize=STEP_FACTOR / self.steps
        )


@register_perturbation
@dataclass(frozen=True)
class L2DeepFool(FoolboxMinimisationAttack):
    name: ClassVar[str] = "l2_deepfool"
    norm: ClassVar[Norm] = Norm.L2
    steps: int = 50
    overshoot: float = 0.02

    def _foolbox(self) -> Any:
        return fb.attacks.L2DeepFoolAttack(steps=self.steps, overshoot=self.overshoot)


@register_perturbation
@dataclass(frozen=True)
class L2CarliniWagner(FoolboxMinimisationAttack):
    name: ClassVar[str] = "l2_cw"
    norm: ClassVar[Norm] = Norm.L2
    binary_search_steps: int = 5
    steps: int = 100
    stepsize: float = 0.01

    def _foolbox(self) -> Any:
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, stepsize=self.stepsize
        )

    def _gave_up(self, found: Tensor, images: Tensor) -> Tensor:
        # Where C&W finds nothing, foolbox returns an all-black image, which is usually
        # misclassified; its distance is not a found perturbation.
        black = (found == 0).flatten(1).all(1)
        return black & (images != 0).flatten(1).any(1)


@register_perturbation
@dataclass(frozen=True)
class LinfFMN(FoolboxMinimisationAttack):
    name: ClassVar[str] = "linf_fmn"
    norm: ClassVar[Norm] = Norm.LINF
    max_strength: ClassVar[float] = 1.0
    steps: int = 100

    def _foolbox(self) -> Any:
        return fb.attacks.LInfFMNAttack(steps=self.steps)


@register_perturbation
@dataclass(frozen=True)
class L2FMN(FoolboxMinimisationAttack):
    name: ClassVar[str] = "l2_fmn"
    norm: ClassVar[Norm] = Norm.L2
    steps: int = 100

    def _foolbox(self) -> Any:
        return fb.attacks.L2FMNAttack(steps=self.steps)


@register_perturbation
@dataclass(frozen=True)
class Boundary(FoolboxMinimisationAttack):
    """Decision-based (labels only): if it beats the gradient attacks, gradients are masked."""

    name: ClassVar[str] = "boundary"
    norm: ClassVar[Norm] = Norm.L2
    steps: int = 500
    init_directions: int = 100

    def _foolbox(self) -> Any:
        return fb.attacks.BoundaryAttack(steps=self.steps)

    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        epsilons: Sequence[float],
        generator: torch.Generator,
    ) -> AttackOutcome:
        """The Boundary attack starts from adversarial points (blended uniform noise). foolbox
        raises when any input has none; here those inputs count as not broken (distance inf)
        and the attack runs on the others."""
        fmodel = self._fmodel(model, images)
        init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(
            directions=self.init_directions, steps=100
        )
        with warnings.catch_warnings():  # it warns about the inputs we handle below
            warnings.simplefilter("ignore", UserWarning)
            starts = init.run(fmodel, images, fb.criteria.Misclassification(labels))
        has_start = (predict(model, starts) != labels).cpu()
        adversarials = {eps: images.clone() for eps in epsilons}
        success = {eps: torch.zeros(len(images), dtype=torch.bool) for eps in epsilons}
        distances = torch.full((len(images),), torch.inf)
        index = has_start.nonzero().flatten()
        if len(index) > 0:
            subset = index.to(images.device)
            raw, clipped, found = self._foolbox()(
                fmodel,
                images[subset],
                labels[subset],
                epsilons=list(epsilons),
                starting_points=starts[subset],
            )
            for eps, adversarial, ok in zip(epsilons, clipped, found, strict=True):
                adversarials[eps][subset] = adversarial.detach()
                success[eps][index] = ok.detach().cpu()
            distances[index] = self._distances(
                model, raw[0].detach(), images[subset], labels[subset]
            )
        return AttackOutcome(adversarials, success, distances)


@dataclass(frozen=True)
class AutoAttackBase(FixedEpsilonAttack):
    """AutoAttack through `pyautoattack` (the packaged fra31/auto-attack), one run per ε.

    The standard version's APGD-T and FAB-T target the 9 runner-up classes and APGD-T's DLR
    loss needs ≥ 4 classes. For attributes with fewer classes we run the closest valid
    ensemble, APGD-CE + FAB + Square (untargeted), and record it in `extras["ensemble"]`.
    """

    aa_norm: ClassVar[str]
    batch_size: int = 256

    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        epsilons: Sequence[float],
        generator: torch.Generator,
    ) -> AttackOutcome:
        from pyautoattack import AutoAttack

        logging.getLogger("auto-attack").setLevel(logging.WARNING)
        with torch.no_grad():
            num_classes = int(model(images[:1]).shape[1])
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        adversarials, success = {}, {}
        for eps in epsilons:
            if num_classes >= 4:
                ensemble = "standard"
                runner = AutoAttack(
                    model,
                    norm=self.aa_norm,
                    eps=eps,
                    version="standard",
                    device=images.device,
                    seed=seed,
                )
                runner.apgd_targeted.n_target_classes = min(9, num_classes - 1)
                runner.fab.n_target_classes = min(9, num_classes - 1)
            else:
                ensemble = "apgd-ce+fab+square"
                runner = AutoAttack(
                    model,
                    norm=self.aa_norm,
                    eps=eps,
                    version="custom",
                    attacks=["apgd-ce", "fab", "square"],
                    device=images.device,
                    seed=seed,
                )
                # The standard version's budget: one restart each (custom keeps 5).
                runner.apgd.n_restarts = runner.fab.n_restarts = 1
            runner.verbose = False
            adversarial = runner.run_standard_evaluation(
                images, labels, batch_size=self.batch_size
            )[0].detach()
            adversarials[eps] = adversarial
            success[eps] = (predict(model, adversarial) != labels).cpu()
        return AttackOutcome(adversarials, success, extras={"ensemble": ensemble})


@register_perturbation
@dataclass(frozen=True)
class AutoAttackLinf(AutoAttackBase):
    name: ClassVar[str] = "autoattack_linf"
    norm: ClassVar[Norm] = Norm.LINF
    aa_norm: ClassVar[str] = "Linf"
    max_strength: ClassVar[float] = 1.0


@register_perturbation
@dataclass(frozen=True)
class AutoAttackL2(AutoAttackBase):
    name: ClassVar[str] = "autoattack_l2"
    norm: ClassVar[Norm] = Norm.L2
    aa_norm: ClassVar[str] = "L2"
