"""The adversarial sanity checklist of Carlini et al. 2019, *On Evaluating Adversarial Robustness*
(arXiv 1902.06705, its evaluation checklist), as pure functions over plain data.

Computed per (variant, attribute) from curves keyed by ε:

- `robust_accuracy_by_attack[attack][ε]`: robust accuracy under a white-box gradient attack;
- `success_by_attack[attack][ε]`: that attack's success rate among the clean-correct samples;
- `transfer_success[ε]`: success rate of adversarials crafted on another variant (black-box);
- `decision_based_success[ε]`: success rate of a decision-based attack (e.g. boundary attack).

Every attack in the two `*_by_attack` mappings is taken to be a white-box gradient attack; the
transfer and decision-based curves are passed separately. Each flag is True when its check passes,
False when it fails, and None when it cannot be evaluated (the attacks or ε values it needs are
missing). nan values (undefined rates) are treated as missing points. ε values are matched with
`math.isclose`, so 8/255 written twice in different ways still matches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from iamt.vocabulary import MASKING_CHECKS, SANITY_CHECKS

__all__ = [
    "CHECKS",
    "FGSM",
    "LINF_PGD",
    "LOGIT_SCALE_BOUNDS",
    "MASKING",
    "all_passed",
    "masking_flags",
    "sanity_flags",
]

FGSM = "fgsm"
"""Attack name of the fast gradient sign method (Goodfellow et al. 2015), for `pgd_beats_fgsm`."""
LINF_PGD = "linf_pgd"
"""Attack name of L∞ projected gradient descent (Madry et al. 2018), for `pgd_beats_fgsm`."""

CHECKS = SANITY_CHECKS
"""The flags `sanity_flags` returns, in this order."""
MASKING = MASKING_CHECKS
"""The flags `masking_flags` returns, in this order."""

LOGIT_SCALE_BOUNDS = (0.5, 2.0)
"""A variant's logit scale ÷ the normal model's outside this range flags it: a factor of two
changes the softmax temperature enough to saturate or flatten a loss-gradient attack."""

Curve = Mapping[float, float]


def _points(curve: Curve) -> list[tuple[float, float]]:
    """(ε, value) sorted by ε, nan values dropped."""
    return sorted((float(eps), float(v)) for eps, v in curve.items() if not math.isnan(v))


def _lookup(curve: Curve, epsilon: float) -> float | None:
    """The curve's value at ε (matched with isclose), None when absent or nan."""
    for eps, value in _points(curve):
        if math.isclose(eps, epsilon, rel_tol=1e-9, abs_tol=1e-12):
            return value
    return None


def _monotone(robust_accuracy_by_attack: Mapping[str, Curve], tolerance: float) -> bool | None:
    """Robust accuracy never rises above its minimum at any smaller ε by more than `tolerance`."""
    verdict: bool | None = None
    for curve in robust_accuracy_by_attack.values():
        points = _points(curve)
        if len(points) < 2:
            continue
        verdict = True
        lowest = points[0][1]
        for _, accuracy in points[1:]:
            if accuracy > lowest + tolerance:
                return False
            lowest = min(lowest, accuracy)
    return verdict


def _at_least(stronger: Curve, weaker: Curve, tolerance: float) -> bool | None:
    """stronger(ε) ≥ weaker(ε) − tolerance at every ε the two share; None when they share none."""
    verdict: bool | None = None
    for eps, weak in _points(weaker):
        strong = _lookup(stronger, eps)
        if strong is None:
            continue
        verdict = True
        if strong < weak - tolerance:
            return False
    return verdict


def _best_gradient(success_by_attack: Mapping[str, Curve]) -> dict[float, float]:
    """The strongest gradient attack's success at each ε: the pointwise maximum over attacks."""
    best: dict[float, float] = {}
    for curve in success_by_attack.values():
        for eps, value in _points(curve):
            key = next((k for k in best if math.isclose(k, eps, rel_tol=1e-9, abs_tol=1e-12)), eps)
            best[key] = max(best.get(key, -math.inf), value)
    return best


def sanity_flags(
    robust_accuracy_by_attack: Mapping[str, Curve],
    success_by_attack: Mapping[str, Curve],
    *,
    transfer_success: Curve | None = None,
    decision_based_success: Curve | None = None,
    large_epsilon: float | None = None,
    tolerance: float = 0.02,
) -> dict[str, bool | None]:
    """The checklist of Carlini et al. 2019 for one (variant, attribute); True = check passes.

    - `monotone_in_epsilon` (more budget must not help the model): for
      every gradient attack, robust accuracy at each ε is at most the lowest robust accuracy at any
      smaller ε plus `tolerance`. None when no attack has two ε values.
    - `pgd_beats_fgsm` (iterative attacks must beat single-step ones):
      success of `LINF_PGD` ≥ success of `FGSM` − `tolerance` at every common ε. None when either
      attack or a common ε is missing.
    - `reaches_full_success` (a large enough budget must break every input): the strongest
      gradient attack's success is ≥ 1 − `tolerance` at `large_epsilon`, or at the largest ε of any
      gradient attack when `large_epsilon` is None. None when no attack was run at that ε.
    - `whitebox_beats_transfer` (white-box must beat black-box):
      the strongest gradient attack's success ≥ `transfer_success` − `tolerance` at every common ε.
    - `no_gradient_masking` (gradient-free must not beat gradient-based):
      `decision_based_success` ≤ the strongest gradient attack's success + `tolerance` at every
      common ε; False flags gradient masking (Athalye et al. 2018).

    "Strongest gradient attack" is the pointwise maximum of success over `success_by_attack`.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be within [0, 1), got {tolerance}")
    if large_epsilon is not None and not (math.isfinite(large_epsilon) and large_epsilon >= 0):
        raise ValueError(f"large_epsilon must be finite and >= 0, got {large_epsilon}")

    best = _best_gradient(success_by_attack)
    pgd_beats_fgsm: bool | None = None
    if FGSM in success_by_attack and LINF_PGD in success_by_attack:
        pgd_beats_fgsm = _at_least(success_by_attack[LINF_PGD], success_by_attack[FGSM], tolerance)
    whitebox_beats_transfer = (
        None if transfer_success is None else _at_least(best, transfer_success, tolerance)
    )
    no_gradient_masking = (
        None
        if decision_based_success is None
        else _at_least(best, decision_based_success, tolerance)
    )

    return {
        "monotone_in_epsilon": _monotone(robust_accuracy_by_attack, tolerance),
        "pgd_beats_fgsm": pgd_beats_fgsm,
        "reaches_full_success": _reaches_full_success(best, large_epsilon, tolerance),
        "whitebox_beats_transfer": whitebox_beats_transfer,
        "no_gradient_masking": no_gradient_masking,
    }


def _reaches_full_success(
    best: Curve, large_epsilon: float | None, tolerance: float
) -> bool | None:
    """The strongest gradient attack breaks (nearly) every input at the large ε."""
    if not best:
        return None
    success = _lookup(best, max(best) if large_epsilon is None else large_epsilon)
    return None if success is None else success >= 1 - tolerance


def all_passed(flags: Mapping[str, bool | None], *, strict: bool = False) -> bool | None:
    """Summary of `sanity_flags`: False when any check failed; otherwise True when at least one
    check was evaluated (and all evaluated ones passed), None when none could be evaluated.

    With `strict=True`, a check that could not be evaluated also makes the result None (unless
    another one failed): True then means every check ran and passed.
    """
    values = list(flags.values())
    if any(value is False for value in values):
        return False
    if strict and any(value is None for value in values):
        return None
    if all(value is None for value in values):
        return None
    return True


def _number(value: float | None) -> float | None:
    """None for a missing or NaN value (a check that cannot be evaluated)."""
    return None if value is None or math.isnan(value) else float(value)


def masking_flags(
    *,
    gradient_zero_fraction: float | None,
    gradient_nonfinite_fraction: float | None,
    logit_scale_ratio: float | None,
    distance_ratio: float | None = None,
    fgsm_difference: float | None = None,
    tolerance: float = 0.02,
) -> dict[str, bool | None]:
    """The per-variant gradient-masking flags, after AutoAttack's (Croce & Hein 2020); True =
    the check passes, None = it cannot be evaluated.

    - `nonzero_gradients`: at most `tolerance` of the samples have a zero, NaN or infinite input
      gradient (robustness/gradients.py).
    - `comparable_logit_scale`: the variant's logit scale ÷ the normal model's lies within
      LOGIT_SCALE_BOUNDS.
    - `minimisation_agrees_with_fgsm`: it is not the case that a minimisation attack needs a
      larger perturbation after emphasis (`distance_ratio` = the variant's median minimal
      distance ÷ the normal model's, above 1 + `tolerance`) while FGSM's robust accuracy falls
      (`fgsm_difference` = variant − normal, below −`tolerance`): the two would then disagree on
      whether the variant is more robust, which is what masked gradients look like.
    """
    zero, nonfinite = _number(gradient_zero_fraction), _number(gradient_nonfinite_fraction)
    ratio, distance, fgsm = (
        _number(logit_scale_ratio),
        _number(distance_ratio),
        _number(fgsm_difference),
    )
    low, high = LOGIT_SCALE_BOUNDS
    nonzero = None if zero is None or nonfinite is None else zero + nonfinite <= tolerance
    comparable = None if ratio is None else low <= ratio <= high
    agrees = (
        None
        if distance is None or fgsm is None
        else not (distance > 1 + tolerance and fgsm < -tolerance)
    )
    return {
        "nonzero_gradients": nonzero,
        "comparable_logit_scale": comparable,
        "minimisation_agrees_with_fgsm": agrees,
    }
