"""The Carlini et al. 2019 checklist: every flag passing, failing, and None when data is missing."""

from __future__ import annotations

import pytest

from robustness.sanity import CHECKS, FGSM, LINF_PGD, all_passed, sanity_flags

EPS = (0.0, 2 / 255, 4 / 255, 8 / 255)

# A healthy evaluation: clean accuracy 0.9, PGD stronger than FGSM, PGD reaches 100 %.
HEALTHY_ACCURACY = {
    FGSM: dict(zip(EPS, [0.9, 0.6, 0.4, 0.3], strict=True)),
    LINF_PGD: dict(zip(EPS, [0.9, 0.4, 0.1, 0.0], strict=True)),
}
HEALTHY_SUCCESS = {
    FGSM: dict(zip(EPS, [0.0, 0.33, 0.56, 0.67], strict=True)),
    LINF_PGD: dict(zip(EPS, [0.0, 0.56, 0.89, 1.0], strict=True)),
}
TRANSFER = dict(zip(EPS, [0.0, 0.2, 0.4, 0.6], strict=True))
DECISION = dict(zip(EPS, [0.0, 0.3, 0.7, 0.95], strict=True))


def healthy(**overrides: object) -> dict[str, bool | None]:
    kwargs: dict[str, object] = {
        "transfer_success": TRANSFER,
        "decision_based_success": DECISION,
    }
    kwargs.update(overrides)
    return sanity_flags(HEALTHY_ACCURACY, HEALTHY_SUCCESS, **kwargs)  # type: ignore[arg-type]


def test_healthy_evaluation_passes_every_check() -> None:
    flags = healthy()
    assert list(flags) == list(CHECKS)
    assert all(flags[check] is True for check in CHECKS), flags
    assert all_passed(flags) is True
    assert all_passed(flags, strict=True) is True


# --------------------------------------------------------------------------- monotone_in_epsilon


def test_accuracy_rising_with_epsilon_fails_monotonicity() -> None:
    accuracy = {LINF_PGD: {0.0: 0.9, 0.01: 0.5, 0.02: 0.6}}  # +0.1 > tolerance
    assert sanity_flags(accuracy, {})["monotone_in_epsilon"] is False


def test_monotonicity_tolerates_noise_within_tolerance() -> None:
    accuracy = {LINF_PGD: {0.0: 0.9, 0.01: 0.5, 0.02: 0.51, 0.03: 0.4}}
    assert sanity_flags(accuracy, {}, tolerance=0.02)["monotone_in_epsilon"] is True


def test_monotonicity_compares_against_the_running_minimum() -> None:
    # Each step rises by only 0.015 < tolerance, but 0.53 is 0.03 above the minimum 0.5.
    accuracy = {FGSM: {0.01: 0.5, 0.02: 0.515, 0.03: 0.53}}
    assert sanity_flags(accuracy, {})["monotone_in_epsilon"] is False


def test_monotonicity_sorts_epsilon_and_checks_every_attack() -> None:
    # Unsorted keys, and only the second attack misbehaves.
    accuracy = {
        FGSM: {0.03: 0.2, 0.0: 0.9, 0.01: 0.5},
        "l2_pgd": {0.5: 0.8, 0.0: 0.9, 1.0: 0.85},
    }
    assert sanity_flags(accuracy, {})["monotone_in_epsilon"] is False
    del accuracy["l2_pgd"]
    assert sanity_flags(accuracy, {})["monotone_in_epsilon"] is True


def test_monotonicity_needs_two_epsilons() -> None:
    assert sanity_flags({FGSM: {0.01: 0.5}}, {})["monotone_in_epsilon"] is None
    assert sanity_flags({}, {})["monotone_in_epsilon"] is None


def test_nan_points_are_ignored() -> None:
    accuracy = {FGSM: {0.0: 0.9, 0.01: float("nan"), 0.02: 0.4}}
    assert sanity_flags(accuracy, {})["monotone_in_epsilon"] is True


# --------------------------------------------------------------------------- pgd_beats_fgsm


def test_fgsm_stronger_than_pgd_fails() -> None:
    success = {FGSM: {0.01: 0.6, 0.02: 0.8}, LINF_PGD: {0.01: 0.7, 0.02: 0.7}}
    assert sanity_flags({}, success)["pgd_beats_fgsm"] is False


def test_pgd_within_tolerance_of_fgsm_passes() -> None:
    success = {FGSM: {0.01: 0.6, 0.02: 0.8}, LINF_PGD: {0.01: 0.7, 0.02: 0.79}}
    assert sanity_flags({}, success)["pgd_beats_fgsm"] is True


def test_pgd_vs_fgsm_matches_epsilon_written_differently() -> None:
    success = {FGSM: {0.1 + 0.2: 0.8}, LINF_PGD: {0.3: 0.5}}  # 0.30000000000000004 vs 0.3
    assert sanity_flags({}, success)["pgd_beats_fgsm"] is False


@pytest.mark.parametrize(
    "success",
    [
        {FGSM: {0.01: 0.6}},  # no PGD
        {LINF_PGD: {0.01: 0.6}},  # no FGSM
        {FGSM: {0.01: 0.6}, LINF_PGD: {0.02: 0.9}},  # no common ε
    ],
)
def test_pgd_vs_fgsm_is_none_without_both_attacks(success: dict[str, dict[float, float]]) -> None:
    assert sanity_flags({}, success)["pgd_beats_fgsm"] is None


# --------------------------------------------------------------------------- reaches_full_success


def test_full_success_at_the_largest_epsilon() -> None:
    # FGSM stalls at 0.67, but the strongest attack (PGD) reaches 1.0 at the largest ε.
    assert healthy()["reaches_full_success"] is True


def test_no_attack_reaching_full_success_fails() -> None:
    success = {FGSM: {0.01: 0.5, 0.1: 0.9}, LINF_PGD: {0.01: 0.6, 0.1: 0.97}}
    assert sanity_flags({}, success)["reaches_full_success"] is False
    assert sanity_flags({}, success, tolerance=0.05)["reaches_full_success"] is True


def test_full_success_uses_large_epsilon_when_given() -> None:
    success = {LINF_PGD: {0.01: 0.6, 0.1: 0.99, 0.5: 1.0}}
    assert sanity_flags({}, success, large_epsilon=0.1)["reaches_full_success"] is True
    assert sanity_flags({}, success, large_epsilon=0.01)["reaches_full_success"] is False
    assert sanity_flags({}, success, large_epsilon=0.3)["reaches_full_success"] is None


def test_full_success_is_none_without_gradient_attacks() -> None:
    assert sanity_flags({}, {})["reaches_full_success"] is None


# ------------------------------------------------------------------------ whitebox_beats_transfer


def test_transfer_stronger_than_whitebox_fails() -> None:
    transfer = dict(zip(EPS, [0.0, 0.7, 0.8, 0.9], strict=True))  # 0.7 > PGD's 0.56
    assert healthy(transfer_success=transfer)["whitebox_beats_transfer"] is False


def test_whitebox_compares_against_the_best_gradient_attack() -> None:
    # Transfer beats FGSM (0.33) at 2/255 but not PGD (0.56): passes.
    transfer = {2 / 255: 0.5}
    assert healthy(transfer_success=transfer)["whitebox_beats_transfer"] is True


def test_transfer_check_is_none_without_transfer_data() -> None:
    assert healthy(transfer_success=None)["whitebox_beats_transfer"] is None
    assert healthy(transfer_success={0.5: 0.1})["whitebox_beats_transfer"] is None  # no common ε


# --------------------------------------------------------------------------- no_gradient_masking


def test_decision_based_attack_stronger_flags_gradient_masking() -> None:
    decision = {4 / 255: 0.95}  # > PGD's 0.89 + 0.02
    assert healthy(decision_based_success=decision)["no_gradient_masking"] is False


def test_decision_based_attack_within_tolerance_passes() -> None:
    decision = {4 / 255: 0.905}  # ≤ 0.89 + 0.02
    assert healthy(decision_based_success=decision)["no_gradient_masking"] is True


def test_gradient_masking_check_is_none_without_decision_attack() -> None:
    assert healthy(decision_based_success=None)["no_gradient_masking"] is None
    assert sanity_flags({}, {}, decision_based_success=DECISION)["no_gradient_masking"] is None


# --------------------------------------------------------------------------- arguments, summary


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"tolerance": -0.1}, "-0.1"), ({"large_epsilon": -1.0}, "-1.0")]
)
def test_sanity_flags_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sanity_flags({}, {}, **kwargs)  # type: ignore[arg-type]


def test_nothing_evaluable_gives_none_everywhere() -> None:
    flags = sanity_flags({}, {})
    assert flags == dict.fromkeys(CHECKS)
    assert all_passed(flags) is None


def test_all_passed() -> None:
    assert all_passed({"a": True, "b": None}) is True
    assert all_passed({"a": True, "b": None}, strict=True) is None
    assert all_passed({"a": True, "b": False, "c": None}) is False
    assert all_passed({"a": False, "b": None}, strict=True) is False
    assert all_passed({}) is None
