"""Metrics against hand-computed values: Wilson, McNemar, bootstrap, mCE, AUC, adversarial."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from robustness.metrics import (
    CorruptionErrorSummary,
    PairedComparison,
    area_under_curve,
    attack_success_rate,
    corruption_errors,
    mcnemar_exact,
    median_distance,
    paired_difference,
    robust_accuracy,
    robust_accuracy_from_distances,
    wilson_interval,
)

# --------------------------------------------------------------------------- Wilson


def test_wilson_interval_known_value() -> None:
    # 8/10: p̂ = 0.8, z = 1.95996; centre (8 + z²/2)/(10 + z²) = 0.7167,
    # half-width z·sqrt(10·0.8·0.2 + z²/4)/(10 + z²) = 0.2266 → (0.490, 0.943).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-4)
    assert high == pytest.approx(0.9433, abs=5e-4)


@pytest.mark.parametrize("n", [1, 2, 7, 16, 100, 500, 2000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_interval_equals_scipy_bit_for_bit(n: int, confidence: float) -> None:
    from scipy.stats import binomtest

    for correct in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        reference = binomtest(correct, n).proportion_ci(confidence, method="wilson")
        assert wilson_interval(correct, n, confidence) == (reference.low, reference.high)


@pytest.mark.parametrize(("correct", "n"), [(1, 0), (-1, 10), (11, 10)])
def test_wilson_interval_rejects_bad_counts(correct: int, n: int) -> None:
    with pytest.raises(ValueError, match=str(n) if n <= 0 else str(correct)):
        wilson_interval(correct, n)


# --------------------------------------------------------------------------- McNemar


def test_mcnemar_hand_computed() -> None:
    # b = 0, c = 6: P(X = 0) + P(X = 6) under Binomial(6, 1/2) = 2 · 0.5^6.
    assert mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6) == pytest.approx(0.03125)
    assert mcnemar_exact(6, 0) == pytest.approx(0.03125)


def test_mcnemar_matches_scipy_and_is_symmetric() -> None:
    assert mcnemar_exact(3, 12) == pytest.approx(binomtest(12, 15, 0.5).pvalue)
    assert mcnemar_exact(3, 12) == pytest.approx(mcnemar_exact(12, 3))
    # 2 vs 8: 2 · P(X ≤ 2 | n = 10) = 2 · (1 + 10 + 45) / 1024 = 0.109375.
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024)


def test_mcnemar_no_discordant_pairs_is_one() -> None:
    assert mcnemar_exact(0, 0) == 1.0


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_mcnemar_rejects_bad_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="n_b_only"):
        mcnemar_exact(1, bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- paired bootstrap


def test_paired_difference_counts_and_point_estimate() -> None:
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 1, 1, 1, 1, 1], dtype=bool)
    result = paired_difference(a, b, n_boot=500)
    assert isinstance(result, PairedComparison)
    assert result.n == 8
    assert result.accuracy_a == pytest.approx(5 / 8)
    assert result.accuracy_b == pytest.approx(7 / 8)
    assert result.difference == pytest.approx(2 / 8)
    assert (result.n_a_only, result.n_b_only) == (1, 3)
    assert result.mcnemar_p == pytest.approx(binomtest(3, 4, 0.5).pvalue)  # = 0.625
    assert result.ci_low <= result.difference <= result.ci_high
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.n = 3  # type: ignore[misc]


def test_paired_difference_accepts_zero_one_integers() -> None:
    as_int = paired_difference([1, 0, 1, 1], [1, 1, 1, 0], n_boot=100)
    as_bool = paired_difference(
        np.array([1, 0, 1, 1], dtype=bool), np.array([1, 1, 1, 0], dtype=bool), n_boot=100
    )
    assert as_int == as_bool


def test_paired_bootstrap_contains_the_true_difference() -> None:
    # Independent Bernoulli(0.7) and Bernoulli(0.8) outcomes: the population difference is 0.1.
    rng = np.random.default_rng(12)
    a = rng.random(3000) < 0.7
    b = rng.random(3000) < 0.8
    result = paired_difference(a, b, seed=1)
    assert result.ci_low < 0.1 < result.ci_high
    assert result.ci_low > 0  # and the effect is detected
    assert result.mcnemar_p < 0.001


def test_paired_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.6, rng.random(200) < 0.65
    clusters = np.arange(200) // 4
    assert paired_difference(a, b, seed=5) == paired_difference(a, b, seed=5)
    assert paired_difference(a, b, seed=5, clusters=clusters) == paired_difference(
        a, b, seed=5, clusters=clusters
    )
    # With few replicates the percentiles fall between draws, so another seed moves them.
    assert paired_difference(a, b, seed=5, n_boot=40) != paired_difference(a, b, seed=6, n_boot=40)


def test_paired_bootstrap_shrinks_with_n() -> None:
    # The same pattern of outcomes, repeated 10× and 100×: the interval narrows ~ 1/sqrt(n).
    a = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    b = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    small = paired_difference(np.tile(a, 10), np.tile(b, 10))
    large = paired_difference(np.tile(a, 100), np.tile(b, 100))
    width_small = small.ci_high - small.ci_low
    width_large = large.ci_high - large.ci_low
    assert small.difference == pytest.approx(large.difference) == pytest.approx(0.1)
    assert width_large < width_small / 2  # sqrt(10) ≈ 3.2 in theory


def test_cluster_bootstrap_is_wider_when_samples_repeat() -> None:
    # 60 images, each evaluated under 5 perturbations with the same outcome: 300 pairs that hold
    # only 60 independent observations. The pair bootstrap pretends there are 300.
    rng = np.random.default_rng(3)
    a_image = rng.random(60) < 0.6
    b_image = rng.random(60) < 0.7
    a, b = np.repeat(a_image, 5), np.repeat(b_image, 5)
    image_id = np.repeat(np.arange(60), 5)
    pairs = paired_difference(a, b)
    clustered = paired_difference(a, b, clusters=image_id)
    assert clustered.difference == pairs.difference
    assert (clustered.ci_high - clustered.ci_low) > 1.8 * (pairs.ci_high - pairs.ci_low)


def test_cluster_bootstrap_of_singletons_matches_the_pair_bootstrap() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random(400) < 0.5, rng.random(400) < 0.6
    pairs = paired_difference(a, b, n_boot=4000)
    singletons = paired_difference(a, b, n_boot=4000, clusters=np.arange(400) * 7)
    assert singletons.ci_low == pytest.approx(pairs.ci_low, abs=0.01)
    assert singletons.ci_high == pytest.approx(pairs.ci_high, abs=0.01)


def test_identical_models_give_a_zero_interval() -> None:
    a = np.array([1, 0, 1, 1, 0], dtype=bool)
    result = paired_difference(a, a.copy(), n_boot=50)
    assert (result.difference, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)
    assert result.mcnemar_p == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"correct_a": [1, 0, 1], "correct_b": [1, 0]}, "equal lengths"),
        ({"correct_a": [], "correct_b": []}, "empty"),
        ({"correct_a": [1, 2], "correct_b": [1, 0]}, r"\[2\]"),
        ({"correct_a": [[1, 0]], "correct_b": [[1, 0]]}, "1-D"),
        ({"correct_a": [1, 0], "correct_b": [1, 0], "n_boot": 0}, "n_boot"),
        ({"correct_a": [1, 0], "correct_b": [1, 0], "confidence": 1.5}, "1.5"),
        ({"correct_a": [1, 0], "correct_b": [1, 0], "clusters": [0]}, "clusters"),
        ({"correct_a": [1, 0], "correct_b": [1, 0], "clusters": [0.5, 1.0]}, "integer"),
    ],
)
def test_paired_difference_rejects_bad_input(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paired_difference(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- corruption errors

ERRORS = {"noise": [0.2, 0.3, 0.5], "blur": [0.1, 0.2, 0.3]}
BASELINE = {"noise": [0.25, 0.5, 0.75], "blur": [0.2, 0.2, 0.2]}


def test_mce_hand_computed() -> None:
    # CE_noise = (0.2 + 0.3 + 0.5) / (0.25 + 0.5 + 0.75) = 1.0 / 1.5 = 2/3
    # CE_blur  = (0.1 + 0.2 + 0.3) / (0.2 + 0.2 + 0.2)   = 0.6 / 0.6 = 1
    # mCE      = (2/3 + 1) / 2 = 5/6
    summary = corruption_errors(ERRORS, BASELINE, clean_error=0.1, baseline_clean_error=0.05)
    assert isinstance(summary, CorruptionErrorSummary)
    assert summary.ce == pytest.approx({"noise": 2 / 3, "blur": 1.0})
    assert summary.mce == pytest.approx(5 / 6)


def test_relative_mce_hand_computed() -> None:
    # E_clean = 0.1, E^base_clean = 0.05
    # rel CE_noise = ((0.2-0.1) + (0.3-0.1) + (0.5-0.1)) / ((0.25-0.05) + (0.5-0.05) + (0.75-0.05))
    #              = 0.7 / 1.35 = 14/27
    # rel CE_blur  = ((0.1-0.1) + (0.2-0.1) + (0.3-0.1)) / (3 · (0.2-0.05)) = 0.3 / 0.45 = 2/3
    # relative mCE = (14/27 + 18/27) / 2 = 16/27
    summary = corruption_errors(ERRORS, BASELINE, clean_error=0.1, baseline_clean_error=0.05)
    assert summary.relative_ce == pytest.approx({"noise": 14 / 27, "blur": 2 / 3})
    assert summary.relative_mce == pytest.approx(16 / 27)


def test_baseline_against_itself_has_unit_mce() -> None:
    summary = corruption_errors(BASELINE, BASELINE, 0.05, 0.05)
    assert summary.mce == pytest.approx(1.0)
    assert summary.relative_mce == pytest.approx(1.0)


def test_zero_denominator_gives_nan_and_is_skipped_by_the_mean() -> None:
    # The baseline never errs under blur, even at clean: both blur ratios are undefined.
    baseline = {"noise": [0.25, 0.5, 0.75], "blur": [0.0, 0.0, 0.0]}
    summary = corruption_errors(ERRORS, baseline, clean_error=0.1, baseline_clean_error=0.0)
    assert math.isnan(summary.ce["blur"])
    assert math.isnan(summary.relative_ce["blur"])
    assert summary.mce == pytest.approx(2 / 3)  # CE_noise alone
    # rel CE_noise = 0.7 / 1.5
    assert summary.relative_mce == pytest.approx(0.7 / 1.5)


def test_non_degrading_baseline_gives_nan_relative_ce() -> None:
    # Baseline clean error 0.3 above its blur errors (0.2): Σ(E^base − E^base_clean) = −0.3 ≤ 0.
    summary = corruption_errors(ERRORS, BASELINE, clean_error=0.1, baseline_clean_error=0.3)
    assert math.isnan(summary.relative_ce["blur"])
    assert summary.ce["blur"] == pytest.approx(1.0)  # the plain CE is still defined
    # rel CE_noise = 0.7 / (1.5 - 0.9)
    assert summary.relative_mce == pytest.approx(0.7 / 0.6)


def test_all_undefined_gives_nan_means() -> None:
    zeros = {"blur": [0.0, 0.0]}
    summary = corruption_errors({"blur": [0.1, 0.2]}, zeros, 0.0, 0.0)
    assert math.isnan(summary.mce) and math.isnan(summary.relative_mce)


@pytest.mark.parametrize(
    ("errors", "baseline", "match"),
    [
        ({"noise": [0.1]}, {"blur": [0.1]}, "only in errors: \\['noise'\\]"),
        ({"noise": [0.1, 0.2]}, {"noise": [0.1]}, "2 severities"),
        ({"noise": []}, {"noise": []}, "non-empty"),
        ({"noise": [-0.1]}, {"noise": [0.1]}, "-0.1"),
        ({"noise": [math.nan]}, {"noise": [0.1]}, "nan"),
        ({}, {}, "at least one"),
    ],
)
def test_corruption_errors_rejects_bad_tables(
    errors: dict[str, list[float]], baseline: dict[str, list[float]], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        corruption_errors(errors, baseline, 0.0, 0.0)


def test_corruption_errors_rejects_bad_clean_error() -> None:
    with pytest.raises(ValueError, match="baseline_clean_error"):
        corruption_errors(ERRORS, BASELINE, 0.1, -1.0)


# --------------------------------------------------------------------------- AUC


def test_auc_of_a_constant_is_the_constant() -> None:
    assert area_under_curve([0.0, 0.1, 0.3, 1.0], [0.7] * 4) == pytest.approx(0.7)


def test_auc_of_a_linear_curve_is_its_midpoint() -> None:
    # acc(s) = 1 − s on [0, 0.5]: ∫ = 0.5 − 0.125 = 0.375, ÷ 0.5 = 0.75 (= acc at the midpoint).
    assert area_under_curve([0.0, 0.25, 0.5], [1.0, 0.75, 0.5]) == pytest.approx(0.75)


def test_auc_sorts_by_strength() -> None:
    # Trapezoids on sorted points (0, 1), (1, 0.5), (3, 0.5): (0.75·1 + 0.5·2) / 3 = 1.75/3.
    assert area_under_curve([3.0, 0.0, 1.0], [0.5, 1.0, 0.5]) == pytest.approx(1.75 / 3)


@pytest.mark.parametrize(
    ("strengths", "accuracies", "match"),
    [
        ([0.1], [0.5], ">= 2 points"),
        ([0.1, 0.2], [0.5], "equal length"),
        ([0.1, 0.1], [0.5, 0.6], "distinct"),
        ([0.1, math.inf], [0.5, 0.6], "finite"),
    ],
)
def test_auc_rejects_bad_curves(
    strengths: list[float], accuracies: list[float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        area_under_curve(strengths, accuracies)


# --------------------------------------------------------------------------- adversarial

CORRECT = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
SUCCESS = np.array([1, 0, 0, 1, 1, 0], dtype=bool)  # the flag on sample 4 (misclassified) is moot


def test_robust_accuracy() -> None:
    # Robust: samples 1 and 2 → 2/6.
    assert robust_accuracy(CORRECT, SUCCESS) == pytest.approx(2 / 6)


def test_attack_success_rate() -> None:
    # Among the 4 clean-correct samples, 2 were attacked.
    assert attack_success_rate(CORRECT, SUCCESS) == pytest.approx(0.5)
    # robust accuracy = clean accuracy × (1 − success rate)
    assert robust_accuracy(CORRECT, SUCCESS) == pytest.approx(4 / 6 * (1 - 0.5))


def test_attack_success_rate_is_nan_without_correct_samples() -> None:
    assert math.isnan(attack_success_rate([0, 0], [1, 0]))
    assert robust_accuracy([0, 0], [1, 0]) == 0.0


def test_adversarial_metrics_reject_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        robust_accuracy(CORRECT, SUCCESS[:3])
    with pytest.raises(ValueError, match="success"):
        attack_success_rate(CORRECT, np.full(6, 0.5))


DISTANCES = np.array([0.01, 0.05, np.inf, 0.03, 0.0, 0.2])


def test_robust_accuracy_from_distances() -> None:
    # ε = 0.03: correct samples 0..3 have distances 0.01, 0.05, inf, 0.03 → robust: 1 and 2
    # (0.03 is not > 0.03: an adversarial on the ε-ball's boundary counts). Sample 5 is wrong.
    assert robust_accuracy_from_distances(CORRECT, DISTANCES, 0.03) == pytest.approx(2 / 6)
    assert robust_accuracy_from_distances(CORRECT, DISTANCES, 0.0) == pytest.approx(4 / 6)
    assert robust_accuracy_from_distances(CORRECT, DISTANCES, 1e9) == pytest.approx(1 / 6)


def test_median_distance() -> None:
    # Clean-correct distances: 0.01, 0.05, inf, 0.03 → median of (0.03, 0.05) = 0.04.
    assert median_distance(DISTANCES, CORRECT) == pytest.approx(0.04)
    # Half of the attacks fail: the median is infinite.
    assert median_distance(np.array([0.1, np.inf, np.inf, 0.2]), np.ones(4, bool)) == math.inf
    assert math.isnan(median_distance(DISTANCES, np.zeros(6, bool)))


@pytest.mark.parametrize("bad", [-0.1, math.nan])
def test_distances_must_be_non_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="distances"):
        median_distance(np.array([0.1, bad]), np.ones(2, bool))
    with pytest.raises(ValueError, match="distances"):
        robust_accuracy_from_distances(np.ones(2, bool), np.array([0.1, bad]), 0.1)


def test_epsilon_must_be_finite() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        robust_accuracy_from_distances(CORRECT, DISTANCES, -1.0)
