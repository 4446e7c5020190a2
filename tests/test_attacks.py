"""Adversarial attacks (foolbox 3 and pyautoattack) against a small trained AttentionNet.

Parametrized over the registry (`list_perturbations(Family.ADVERSARIAL)`), as timm's tests are
over `list_models()`: a newly registered attack is tested for free. Every attack runs with small
hyperparameters on a few images; the foolbox cross-check pins our FGSM and PGD to a direct
foolbox call, and the step-size test pins the DESIGN §7 fact (PGD with 2.5·ε/steps ≥ FGSM).
"""

from __future__ import annotations

from typing import Any

import foolbox as fb
import pytest
import torch
from torch import Tensor, nn

from cluster.config import parse_config
from iamt.checkpoint import load_checkpoint
from iamt.data.shapes import make_shapes
from iamt.importance import channel_importance
from iamt.model import AttentionNet
from iamt.rundir import RunDirectory
from iamt.transforms import parse_transform
from robustness.perturbations import (
    Attack,
    AttackOutcome,
    Family,
    FixedEpsilonAttack,
    MinimisationAttack,
    PerturbationError,
    StrengthAxis,
    create_perturbation,
    get_perturbation_class,
    list_perturbations,
)
from robustness.perturbations.attacks import STEP_FACTOR, AutoAttackBase, attribute_view, predict
from robustness.runner import train_run
from robustness.sanity import _monotone as sanity_monotone

ADVERSARIAL = list_perturbations(Family.ADVERSARIAL)
AUTOATTACKS = [n for n in ADVERSARIAL if issubclass(get_perturbation_class(n), AutoAttackBase)]

# Enough training for shape (attribute 0, 4 classes) to reach ~96 % test accuracy, so that
# attacks have correctly classified samples to flip: ~10 s on one CPU core.
MODEL_CONFIG: dict[str, Any] = {
    "name": "attacks",
    "seed": 5,
    "data": {"name": "shapes", "n_train": 2048, "n_val": 64, "n_test": 64},
    "model": {"widths": [8, 16], "attention_hidden": 8, "head_channels": 8},
    "train": {"epochs": 10, "batch_size": 64, "lr": 1e-2, "device": "cpu"},
    "importance": {"n_samples": 64},
    "emphasis": {"variants": {"emphasized": "topk:k=4,alpha=2"}},
}
SHAPE = 0  # 4 classes: the standard AutoAttack ensemble applies
BACKGROUND = 3  # 2 classes: AutoAttack falls back to APGD-CE + FAB + Square
SEED = 1234
TOLERANCE = 1e-4

# Small hyperparameters so every attack runs in well under a second here. On this model LinfFMN
# finds nothing with 3 steps, and C&W nothing with fewer than 3 binary-search steps × 20 steps
# (its constant starts at 1e-3); the boundary attack is decision-based and needs more steps.
SMALL_PARAMS: dict[str, Any] = {"steps": 5, "binary_search_steps": 2}
PARAM_OVERRIDES: dict[str, dict[str, Any]] = {
    "boundary": {"steps": 20},
    "l2_cw": {"binary_search_steps": 3, "steps": 20},
}
EPSILONS = {"linf": [2 / 255, 8 / 255, 0.3], "l2": [0.1, 0.5, 3.0]}
# AutoAttack is slow: one ε each, large enough that APGD-CE fools these few images at once.
AUTOATTACK_EPSILON = {"linf": 8 / 255, "l2": 1.0}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> AttentionNet:
    """A small AttentionNet trained on `shapes`, loaded back from its checkpoint."""
    run_dir = tmp_path_factory.mktemp("attack-runs") / "attacks"
    train_run(parse_config(MODEL_CONFIG), run_dir, show_progress=False)
    loaded, _ = load_checkpoint(RunDirectory(run_dir).checkpoint_stem)
    return loaded


@pytest.fixture(scope="module")
def test_set() -> tuple[Tensor, Tensor]:
    """32 held-out images (N, 3, 32, 32) and their labels (N, A)."""
    data = make_shapes(32, seed=7)
    return data.images, data.labels


def _attack(name: str, **params: Any) -> Attack:
    attack = create_perturbation(name, **params)
    assert isinstance(attack, Attack)
    return attack


def _small_attack(name: str) -> Attack:
    cls = get_perturbation_class(name)
    params = {k: v for k, v in SMALL_PARAMS.items() if k in cls.parameter_names()}
    return _attack(name, **{**params, **PARAM_OVERRIDES.get(name, {})})


def _norms(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def _check_outcome(
    attack: Attack,
    outcome: AttackOutcome,
    view: nn.Module,
    images: Tensor,
    labels: Tensor,
    epsilons: list[float],
) -> None:
    """The AttackOutcome contract, for any attack and any model."""
    n = images.shape[0]
    assert list(outcome.adversarials) == epsilons
    assert list(outcome.success) == epsilons
    for eps in epsilons:
        adversarial, success = outcome.adversarials[eps], outcome.success[eps]
        assert adversarial.shape == images.shape and adversarial.dtype == images.dtype
        assert bool(torch.isfinite(adversarial).all())
        assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0
        # Within the ε-ball. foolbox also restricts a minimisation attack's result to every ε.
        distance = _norms(adversarial - images, attack.norm)
        assert float(distance.max()) <= eps + TOLERANCE, f"{attack.name} left the {eps} ball"
        assert success.dtype == torch.bool and success.shape == (n,)
        # The success flags say what the model does with the adversarials.
        assert torch.equal(success, predict(view, adversarial) != labels)
    if isinstance(attack, MinimisationAttack):
        distances = outcome.distances
        assert distances is not None and distances.shape == (n,)
        assert distances.is_floating_point()
        assert bool(((distances >= 0) | torch.isinf(distances)).all())
        assert not bool(torch.isnan(distances).any())
        for eps in epsilons:
            # An adversarial found within ε is an adversarial at ε.
            found = distances <= eps * (1 - TOLERANCE)
            assert bool(outcome.success[eps][found].all()), (attack.name, eps)
    else:
        assert outcome.distances is None
    # More budget must not help the model (Carlini et al. 2019, "On Evaluating Adversarial
    # Robustness", §5.2): between the budgets these step sizes suit, success grows. Far above
    # them (L∞ 0.3, where BIM's step 2.5·ε/steps is 0.15) a fixed-step attack can overshoot
    # an image back into its class; the report's sanity check must then say so.
    if len(epsilons) < 2:
        return
    smallest, middle = sorted(epsilons)[:2]
    assert int(outcome.success[middle].sum()) >= int(outcome.success[smallest].sum())
    robust = {eps: 1.0 - float(outcome.success[eps].float().mean()) for eps in epsilons}
    rises = any(robust[b] > robust[s] for s in epsilons for b in epsilons if b > s)
    assert sanity_monotone({attack.name: robust}, tolerance=0.0) is (not rises)


def _assert_same(first: AttackOutcome, second: AttackOutcome) -> None:
    assert list(first.adversarials) == list(second.adversarials)
    for eps in first.adversarials:
        assert torch.equal(first.adversarials[eps], second.adversarials[eps]), eps
        assert torch.equal(first.success[eps], second.success[eps]), eps
    if first.distances is None:
        assert second.distances is None
    else:
        assert second.distances is not None
        assert torch.equal(first.distances, second.distances)
    assert first.extras == second.extras


# ---------------------------------------------------------------- registry


def test_registry_lists_the_attacks() -> None:
    assert {"fgsm", "linf_pgd", "l2_pgd", "autoattack_linf", "autoattack_l2"} <= set(ADVERSARIAL)
    assert set(AUTOATTACKS) == {"autoattack_linf", "autoattack_l2"}
    for name in ADVERSARIAL:
        cls = get_perturbation_class(name)
        assert issubclass(cls, Attack) and cls.name == name
        assert cls.family is Family.ADVERSARIAL and cls.axis is StrengthAxis.EPSILON
        assert cls.norm in ("linf", "l2"), name
        # Exactly one kind, as in foolbox: fixed-ε or minimisation.
        assert issubclass(cls, FixedEpsilonAttack) != issubclass(cls, MinimisationAttack), name
        # An L∞ bound beyond 1 is meaningless for [0, 1] images; an L2 bound may exceed 1.
        assert cls.max_strength == (1.0 if cls.norm == "linf" else 16.0), name
        attack = create_perturbation(name)  # the defaults are valid
        assert repr(attack).startswith(type(attack).__name__ + "(")


def test_attribute_view_is_one_attribute(
    model: AttentionNet, test_set: tuple[Tensor, Tensor]
) -> None:
    images = test_set[0][:4]
    with torch.no_grad():
        logits = model(images).logits
        for a, expected in enumerate(logits):
            assert torch.equal(attribute_view(model, a)(images), expected)
    assert not attribute_view(model, SHAPE).training


# ---------------------------------------------------------------- every attack


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_attack_outcome_and_determinism(
    name: str, model: AttentionNet, test_set: tuple[Tensor, Tensor]
) -> None:
    attack = _small_attack(name)
    if name in AUTOATTACKS:
        n, epsilons = 4, [AUTOATTACK_EPSILON[attack.norm]]
    else:
        n, epsilons = 8, EPSILONS[attack.norm]
    images, labels = test_set[0][:n], test_set[1][:n, SHAPE]
    view = attribute_view(model, SHAPE)
    outcome = attack(view, images, labels, epsilons, seed=SEED)
    _check_outcome(attack, outcome, view, images, labels, epsilons)
    # Meaningful on this model: the attack flips at least one correctly classified sample.
    correct = predict(view, images) == labels
    assert bool(correct.any())
    if isinstance(attack, MinimisationAttack):
        assert outcome.distances is not None
        assert bool(torch.isfinite(outcome.distances[correct]).any()), name
    else:
        assert bool(outcome.success[max(epsilons)][correct].any()), name
    if name in AUTOATTACKS:
        assert outcome.extras["ensemble"] == "standard"
    # Same seed, same adversarials, bit for bit.
    _assert_same(outcome, attack(view, images, labels, epsilons, seed=SEED))


@pytest.mark.parametrize("name", AUTOATTACKS)
def test_autoattack_falls_back_on_two_class_attribute(
    name: str, model: AttentionNet, test_set: tuple[Tensor, Tensor]
) -> None:
    attack = _attack(name)
    epsilons = [AUTOATTACK_EPSILON[attack.norm]]
    images, labels = test_set[0][:4], test_set[1][:4, BACKGROUND]
    view = attribute_view(model, BACKGROUND)
    with torch.no_grad():
        assert view(images).shape == (4, 2)
    outcome = attack(view, images, labels, epsilons, seed=SEED)
    assert outcome.extras["ensemble"] == "apgd-ce+fab+square"
    _check_outcome(attack, outcome, view, images, labels, epsilons)
    _assert_same(outcome, attack(view, images, labels, epsilons, seed=SEED))


# ---------------------------------------------------------------- against foolbox itself


@pytest.mark.parametrize("name", ["fgsm", "linf_pgd"])
def test_matches_a_direct_foolbox_call(
    name: str, model: AttentionNet, test_set: tuple[Tensor, Tensor]
) -> None:
    steps = 7
    images, labels = test_set[0][:16], test_set[1][:16, SHAPE]
    epsilons = [2 / 255, 8 / 255]
    if name == "fgsm":
        ours = _attack("fgsm")
        theirs: Any = fb.attacks.LinfFastGradientAttack(random_start=False)
    else:
        ours = _attack("linf_pgd", steps=steps)
        theirs = fb.attacks.LinfPGD(steps=steps, rel_stepsize=STEP_FACTOR / steps)
    outcome = ours(attribute_view(model, SHAPE), images, labels, epsilons, seed=SEED)

    fmodel = fb.PyTorchModel(attribute_view(model, SHAPE), bounds=(0, 1))
    torch.manual_seed(SEED)  # what Attack.__call__ does before `_attack`
    _, clipped, success = theirs(fmodel, images, labels, epsilons=epsilons)

    for eps, adversarial, fooled in zip(epsilons, clipped, success, strict=True):
        assert torch.equal(outcome.success[eps], fooled), eps
        assert torch.equal(outcome.adversarials[eps], adversarial), eps  # bit for bit
        robust_accuracy = 1.0 - outcome.success[eps].float().mean().item()
        assert robust_accuracy == 1.0 - fooled.float().mean().item()
    # PGD's random start draws from torch's global generator: another seed, another result.
    if name == "linf_pgd":
        other = ours(attribute_view(model, SHAPE), images, labels, epsilons, seed=SEED + 1)
        assert not torch.equal(other.adversarials[8 / 255], outcome.adversarials[8 / 255])


def test_pgd_with_our_step_size_is_at_least_as_strong_as_fgsm(
    model: AttentionNet, test_set: tuple[Tensor, Tensor]
) -> None:
    """DESIGN §7: foolbox's default PGD step was weaker than FGSM; 2.5·ε/steps is not."""
    images, labels = test_set[0], test_set[1][:, SHAPE]
    view = attribute_view(model, SHAPE)
    epsilons = [1 / 255, 2 / 255, 4 / 255]
    fgsm = _attack("fgsm")(view, images, labels, epsilons, seed=SEED)
    pgd = _attack("linf_pgd", steps=10)(view, images, labels, epsilons, seed=SEED)
    for eps in epsilons:
        assert int(pgd.success[eps].sum()) >= int(fgsm.success[eps].sum()) - 1, eps


# ---------------------------------------------------------------- the emphasized model


def test_emphasized_view_is_attackable(
    model: AttentionNet, test_set: tuple[Tensor, Tensor]
) -> None:
    importance = channel_importance(model, make_shapes(64, seed=11))
    emphasized = model.with_transform(parse_transform("topk:k=4,alpha=2"), importance)
    images, labels = test_set[0][:8], test_set[1][:8, SHAPE]
    normal_view, emphasized_view = attribute_view(model, SHAPE), attribute_view(emphasized, SHAPE)
    with torch.no_grad():  # a different model, not a copy
        assert not torch.equal(normal_view(images), emphasized_view(images))
    attack, epsilons = _attack("linf_pgd", steps=5), [2 / 255, 8 / 255]
    outcome = attack(emphasized_view, images, labels, epsilons, seed=SEED)
    _check_outcome(attack, outcome, emphasized_view, images, labels, epsilons)
    correct = predict(emphasized_view, images) == labels
    assert bool(outcome.success[8 / 255][correct].any())  # gradients flow through T
    normal = attack(normal_view, images, labels, epsilons, seed=SEED)
    for eps in epsilons:
        assert not torch.equal(outcome.adversarials[eps], normal.adversarials[eps]), eps


# ---------------------------------------------------------------- invalid input


class _MustNotRun(nn.Module):
    """A model that fails the test if an attack calls it: validation comes before any work."""

    def forward(self, images: Tensor) -> Tensor:
        raise AssertionError("the attack ran although its input was invalid")


def _valid_batch() -> tuple[Tensor, Tensor]:
    data = make_shapes(4, seed=3)
    return data.images, data.labels[:, SHAPE]


@pytest.mark.parametrize(
    ("name", "epsilons", "match"),
    [
        ("fgsm", [], "epsilon list is empty"),
        ("fgsm", [-0.1], r"epsilon -0\.1 is out of range"),
        ("linf_pgd", [8 / 255, 1.5], r"epsilon 1\.5 is out of range.*epsilon ≤ 1\.0"),
        ("l2_pgd", [17.0], r"epsilon 17\.0 is out of range.*epsilon ≤ 16\.0"),
        ("fgsm", [True], "epsilon True is out of range"),
        ("fgsm", ["0.1"], "epsilon '0.1' is out of range"),
        ("l2_pgd", [float("nan")], "epsilon nan is out of range"),
        ("autoattack_linf", [0.5, -1.0], r"epsilon -1\.0 is out of range"),
    ],
)
def test_bad_epsilon_is_refused(name: str, epsilons: list[Any], match: str) -> None:
    images, labels = _valid_batch()
    with pytest.raises(PerturbationError, match=match):
        _attack(name)(_MustNotRun(), images, labels, epsilons, seed=0)


def test_l2_epsilon_may_exceed_one() -> None:
    assert get_perturbation_class("l2_pgd").validate_strength(3.0) == 3.0


def test_bad_labels_are_refused() -> None:
    images, labels = _valid_batch()
    with pytest.raises(PerturbationError, match=r"labels must be \(N,\), got \(4, 1\)"):
        _attack("fgsm")(_MustNotRun(), images, labels[:, None], [0.1], seed=0)
    with pytest.raises(PerturbationError, match=r"labels must be \(N,\), got \(3,\)"):
        _attack("fgsm")(_MustNotRun(), images, labels[:3], [0.1], seed=0)


def test_bad_images_are_refused() -> None:
    images, labels = _valid_batch()
    too_bright = images.clone()
    too_bright[0, 0, 0, 0] = 1.5
    with pytest.raises(PerturbationError, match=r"\[0, 1\].*1\.5"):
        _attack("fgsm")(_MustNotRun(), too_bright, labels, [0.1], seed=0)
    negative = images.clone()
    negative[1, 2, 3, 4] = -0.25
    with pytest.raises(PerturbationError, match=r"-0\.25"):
        _attack("fgsm")(_MustNotRun(), negative, labels, [0.1], seed=0)
    with_nan = images.clone()
    with_nan[0, 1, 2, 3] = float("nan")
    with pytest.raises(PerturbationError, match="NaN"):
        _attack("linf_pgd")(_MustNotRun(), with_nan, labels, [0.1], seed=0)
    with pytest.raises(PerturbationError, match=r"\(N, 3, H, W\), got \(4, 32, 32\)"):
        _attack("fgsm")(_MustNotRun(), images[:, 0], labels, [0.1], seed=0)


@pytest.mark.parametrize("steps", [0, -3])
def test_nonpositive_steps_are_refused(steps: int) -> None:
    with pytest.raises(
        PerturbationError, match=rf"linf_pgd: steps must be a positive integer, got {steps}"
    ):
        create_perturbation("linf_pgd", steps=steps)


def test_unknown_parameter_lists_the_valid_ones() -> None:
    with pytest.raises(PerturbationError, match=r"'stpes'.*valid parameters: .*\bsteps\b"):
        create_perturbation("linf_pgd", stpes=3)


def test_unknown_attack_lists_the_valid_names() -> None:
    with pytest.raises(PerturbationError, match=r"unknown perturbation 'pgd'") as error:
        get_perturbation_class("pgd")
    for name in ADVERSARIAL:
        assert name in str(error.value)


# ---------------------------------------------------------------- regressions


def test_parameter_names_are_the_hyperparameters() -> None:
    assert get_perturbation_class("fgsm").parameter_names() == []
    assert get_perturbation_class("linf_pgd").parameter_names() == ["steps"]
    assert get_perturbation_class("l2_cw").parameter_names() == [
        "binary_search_steps",
        "steps",
        "stepsize",
    ]


def test_autoattack_batch_size_is_a_parameter() -> None:
    attack = create_perturbation("autoattack_linf", batch_size=2)
    assert "batch_size" in get_perturbation_class("autoattack_linf").parameter_names()
    assert repr(attack) == "AutoAttackLinf(batch_size=2)"


def test_carlini_wagner_failure_is_infinite_distance(
    model: AttentionNet, test_set: tuple[Tensor, Tensor]
) -> None:
    images, labels = test_set[0][:8], test_set[1][:8, SHAPE]
    view = attribute_view(model, SHAPE)
    # Too few steps to find anything for the correctly classified samples.
    attack = _attack("l2_cw", binary_search_steps=2, steps=5)
    outcome = attack(view, images, labels, [0.5], seed=SEED)
    assert outcome.distances is not None
    correct = predict(view, images) == labels
    assert not bool(outcome.success[0.5][correct].any())  # it found nothing within 0.5
    image_norms = images.flatten(1).norm(dim=1)
    assert not bool(torch.isclose(outcome.distances, image_norms).any())
    assert bool(torch.isinf(outcome.distances[correct]).all())


def test_model_fixture_is_trained(model: AttentionNet, test_set: tuple[Tensor, Tensor]) -> None:
    images, labels = test_set
    accuracy = (predict(attribute_view(model, SHAPE), images) == labels[:, SHAPE]).float().mean()
    assert float(accuracy) >= 0.75
