"""Robustness metrics. Pure numpy/scipy; no torch, no Ray.

Sections:

- accuracy with a confidence interval (Wilson 1927);
- paired comparison of two models on the same samples: percentile bootstrap CI of the accuracy
  difference (Efron & Tibshirani 1993), optionally a cluster bootstrap (Davison & Hinkley 1997),
  and McNemar's exact test (McNemar 1947);
- common corruptions: CE, mCE, relative CE and relative mCE (Hendrycks & Dietterich, ICLR 2019);
- area under an accuracy-vs-strength curve;
- adversarial robustness: robust accuracy, attack success rate, and the same from the minimal
  adversarial distances of minimisation attacks (Carlini & Wagner 2017; Rauber et al. 2017).

Conventions: per-sample outcomes are 1-D boolean arrays (0/1 integers are accepted), one entry per
sample; every error names the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr, ndtri
from scipy.stats import binomtest

__all__ = [
    "CorruptionErrorSummary",
    "PairedComparison",
    "area_under_curve",
    "attack_success_rate",
    "corruption_errors",
    "mcnemar_exact",
    "median_distance",
    "paired_difference",
    "robust_accuracy",
    "robust_accuracy_from_distances",
    "wilson_interval",
]

# At most this many int64 cells (~32 MiB) per chunk of cluster-bootstrap replicates.
_MAX_CELLS_PER_CHUNK = 1 << 22


# --------------------------------------------------------------------------- input validation


def _bool_vector(name: str, values: ArrayLike) -> NDArray[np.bool_]:
    """`values` as a 1-D boolean array; 0/1 numbers are accepted, anything else is an error."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if array.size and not (np.issubdtype(array.dtype, np.number) and np.isin(array, (0, 1)).all()):
        bad = array[~np.isin(array, (0, 1))] if np.issubdtype(array.dtype, np.number) else array
        raise ValueError(f"{name} must be boolean (or 0/1), got values such as {bad[:5].tolist()}")
    return array.astype(np.bool_)


def _same_length(**arrays: NDArray[np.generic]) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays must have equal lengths, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"arrays must not be empty, got lengths {lengths}")
    return n


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")


def _distance_vector(distances: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(distances, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"distances must be a 1-D array, got shape {array.shape}")
    bad = array[np.isnan(array) | (array < 0)]
    if bad.size:
        raise ValueError(
            f"distances must be >= 0 (inf for a failed attack), got values such as "
            f"{bad[:5].tolist()}"
        )
    return array


# --------------------------------------------------------------------------- accuracy


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy of `correct` / `n` (Wilson 1927)."""
    if n <= 0:
        raise ValueError(f"a confidence interval needs n > 0 samples, got n={n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be within 0..n={n}, got {correct}")
    # Newcombe (1998)'s form, term for term as scipy's binomtest(...).proportion_ci("wilson")
    # computes it (the tests compare the two), without its 0.4 ms of set-up per call: a
    # results.csv of a 10,000-job sweep has 80,000 rows.
    p = correct / n
    z = float(ndtri(0.5 + 0.5 * confidence))
    denom = 2 * (n + z**2)
    center = (2 * n * p + z**2) / denom
    delta = z / denom * math.sqrt(4 * n * p * (1 - p) + z**2)
    low = 0.0 if correct == 0 else center - delta
    high = 1.0 if correct == n else center + delta
    return float(low), float(high)


# --------------------------------------------------------------------------- paired comparison


@dataclass(frozen=True)
class PairedComparison:
    """Model a vs model b on the same samples; `difference` = accuracy_b − accuracy_a.

    `ci_low`, `ci_high`: percentile bootstrap interval of `difference`. `n_a_only`: pairs where a is
    right and b wrong; `n_b_only`: the reverse. `mcnemar_p`: McNemar's exact two-sided p-value.
    """

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci_low: float
    ci_high: float
    n_a_only: int
    n_b_only: int
    mcnemar_p: float


def holm(p_values: ArrayLike) -> NDArray[np.float64]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input's order.

    Sorted ascending, p_(i) becomes max_{j ≤ i} min(1, (m − j + 1) · p_(j)); rejecting where
    the adjusted p is below α controls the family-wise error rate at α for any dependence
    between the m tests. NaN entries (no test) stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    finite = ~np.isnan(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    adjusted = np.full(p.shape, np.nan)
    index = np.flatnonzero(finite)
    order = index[np.argsort(p[index], kind="mergesort")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def mcnemar_exact(n_a_only: int, n_b_only: int) -> float:
    """McNemar's exact test (McNemar 1947) on the discordant counts of a paired 2×2 table.

    Under H0 (both models equally accurate) each of the `n_a_only + n_b_only` discordant pairs is
    equally likely to favour either model, so `n_b_only ~ Binomial(n_a_only + n_b_only, 1/2)`; the
    p-value is the exact two-sided binomial test (`scipy.stats.binomtest`). Concordant pairs carry
    no information. Returns 1.0 when there are no discordant pairs.
    """
    for name, value in (("n_a_only", n_a_only), ("n_b_only", n_b_only)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    discordant = int(n_a_only) + int(n_b_only)
    if discordant == 0:
        return 1.0
    return float(binomtest(int(n_b_only), discordant, 0.5).pvalue)


def paired_difference(
    correct_a: ArrayLike,
    correct_b: ArrayLike,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    clusters: ArrayLike | None = None,
) -> PairedComparison:
    """Accuracy difference of model b over model a on the same samples, with a bootstrap CI.

    `correct_a[i]`, `correct_b[i]`: whether model a (e.g. normal) and model b (e.g. emphasized)
    classified sample i correctly. `difference = mean(correct_b) − mean(correct_a)`.

    CI: percentile bootstrap (Efron & Tibshirani 1993, ch. 13) with `n_boot` replicates from
    `np.random.default_rng(seed)`, so the same inputs and seed give the same interval.

    - `clusters is None`: pairs are resampled with replacement. Each pair's difference
      `d_i = correct_b[i] − correct_a[i]` is one of −1, 0, +1, so resampling n pairs is drawing the
      counts of the three kinds from a multinomial — the same distribution as resampling indices,
      at O(n_boot) cost.
    - `clusters` given (integer ids, one per pair): a cluster bootstrap (Davison & Hinkley 1997,
      ch. 3, hierarchical data; Field & Welsh 2007). Whole clusters are resampled with
      replacement and the replicate statistic is Σ d over the drawn clusters' pairs ÷ their
      number of pairs. Use it when one sample appears several times — e.g. clusters = sample
      ids when the pairs pool several perturbations of the same images: those pairs are not
      independent, and the pair bootstrap would give a too narrow interval.

    The McNemar p-value (`mcnemar_exact`) treats the pairs as independent, also when `clusters` is
    given; with clusters, trust the interval rather than the p-value.
    """
    a = _bool_vector("correct_a", correct_a)
    b = _bool_vector("correct_b", correct_b)
    n = _same_length(correct_a=a, correct_b=b)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    _check_confidence(confidence)
    n_a_only = int(np.count_nonzero(a & ~b))
    n_b_only = int(np.count_nonzero(b & ~a))
    accuracy_a, accuracy_b = float(a.mean()), float(b.mean())
    rng = np.random.default_rng(seed)
    if clusters is None:
        replicates = _pair_replicates(n, n_a_only, n_b_only, int(n_boot), rng)
    else:
        differences = b.astype(np.int64) - a.astype(np.int64)
        replicates = _cluster_replicates(differences, clusters, int(n_boot), rng)
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return PairedComparison(
        n=n,
        accuracy_a=accuracy_a,
        accuracy_b=accuracy_b,
        difference=accuracy_b - accuracy_a,
        ci_low=float(low),
        ci_high=float(high),
        n_a_only=n_a_only,
        n_b_only=n_b_only,
        mcnemar_p=mcnemar_exact(n_a_only, n_b_only),
    )


def _pair_replicates(
    n: int, n_a_only: int, n_b_only: int, n_boot: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Pair-bootstrap replicates of the difference: the counts of d = −1, 0, +1 in each."""
    probabilities = np.array([n_a_only, n - n_a_only - n_b_only, n_b_only]) / n
    counts = rng.multinomial(n, probabilities, size=n_boot)  # (n_boot, 3)
    replicates: NDArray[np.float64] = (counts[:, 2] - counts[:, 0]) / n
    return replicates


def _cluster_replicates(
    differences: NDArray[np.int64], clusters: ArrayLike, n_boot: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Bootstrap replicates of mean(differences), resampling whole clusters with replacement."""
    ids = np.asarray(clusters)
    if ids.ndim != 1 or len(ids) != len(differences):
        raise ValueError(
            f"clusters must be a 1-D array of {len(differences)} ids, got shape {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"clusters must hold integer ids, got dtype {ids.dtype}")
    _, index = np.unique(ids, return_inverse=True)
    n_clusters = int(index.max()) + 1
    cluster_sum = np.bincount(index, weights=differences, minlength=n_clusters)  # (G,)
    cluster_size = np.bincount(index, minlength=n_clusters).astype(np.float64)  # (G,)

    # Draw G cluster indices per replicate, in chunks of replicates to bound memory.
    chunk = max(1, _MAX_CELLS_PER_CHUNK // n_clusters)
    replicates = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        drawn = rng.integers(0, n_clusters, size=(stop - start, n_clusters))  # (chunk, G)
        replicates[start:stop] = cluster_sum[drawn].sum(axis=1) / cluster_size[drawn].sum(axis=1)
    return replicates


@dataclass(frozen=True)
class HierarchicalEffect:
    """A paired effect across training seeds: `effect` = the mean over seeds of each seed's
    mean paired difference; `replicates` (n_boot,) of the two-stage bootstrap behind the CI."""

    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    replicates: NDArray[np.float64]


def hierarchical_bootstrap(
    differences: Sequence[ArrayLike],
    clusters: Sequence[ArrayLike],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> HierarchicalEffect:
    """The mean paired difference over training seeds, with a CI that counts both the seeds'
    and the images' variance: a two-stage (hierarchical) bootstrap (Davison & Hinkley 1997,
    §3.8; Field & Welsh 2007; Ren et al. 2010).

    `differences[s]`: seed s's paired differences (variant − normal, each −1, 0 or +1), one per
    (condition, image); `clusters[s]`: their image ids. Each replicate draws S seeds with
    replacement, and for each drawn seed one image-cluster bootstrap replicate of its mean
    (images resampled with replacement, as `paired_difference` does with `clusters`); the
    replicate is the mean of those S values. A seed drawn twice gets two independent image
    resamples. `p_value`: two-sided, from the bootstrap standard error, 2 · Φ(−|effect| / SE*)
    (Efron & Tibshirani 1993, ch. 6 and 16), 0 when SE* = 0 and the effect is not. Not the
    percentile p, 2 · min(P*(r ≤ 0), P*(r ≥ 0)): that one cannot fall below 2 / (n_boot + 1),
    which Holm's m-fold adjustment over a study's tens of tests would keep above any α."""
    if len(differences) != len(clusters) or not differences:
        raise ValueError("give one differences and one clusters array per seed, at least one")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    seed_means, per_seed = [], []
    for d, ids in zip(differences, clusters, strict=True):
        values = np.asarray(d, dtype=np.int64)
        if values.ndim != 1 or len(values) == 0:
            raise ValueError("each seed needs a non-empty 1-D array of differences")
        seed_means.append(float(values.mean()))
        per_seed.append(_cluster_replicates(values, ids, int(n_boot), rng))
    table = np.stack(per_seed)  # (S, n_boot): image-bootstrap replicates of each seed's mean
    n_seeds = len(per_seed)
    drawn_seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    drawn_columns = rng.integers(0, n_boot, size=(n_boot, n_seeds))
    replicates: NDArray[np.float64] = table[drawn_seeds, drawn_columns].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    effect = float(np.mean(seed_means))
    standard_error = float(replicates.std(ddof=1)) if n_boot > 1 else 0.0
    if standard_error > 0:
        p_value = float(2.0 * ndtr(-abs(effect) / standard_error))
    else:
        p_value = 0.0 if effect != 0 else 1.0
    return HierarchicalEffect(effect, float(low), float(high), p_value, replicates)


# --------------------------------------------------------------------------- common corruptions


@dataclass(frozen=True)
class CorruptionErrorSummary:
    """Corruption errors of a model relative to a baseline (Hendrycks & Dietterich 2019).

    `ce` and `relative_ce` map each corruption to its CE_c and relative CE_c (nan where undefined);
    `mce` and `relative_mce` are their means over the corruptions where they are defined.
    """

    ce: dict[str, float]
    relative_ce: dict[str, float]
    mce: float
    relative_mce: float


def _error_table(name: str, table: Mapping[str, Sequence[float]]) -> dict[str, NDArray[np.float64]]:
    result: dict[str, NDArray[np.float64]] = {}
    for corruption, values in table.items():
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(
                f"{name}[{corruption!r}] must be a non-empty sequence of errors per severity, "
                f"got {values!r}"
            )
        if not np.isfinite(array).all() or (array < 0).any():
            raise ValueError(
                f"{name}[{corruption!r}] must hold finite errors >= 0, got {array.tolist()}"
            )
        result[corruption] = array
    return result


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def _nanmean(values: Sequence[float]) -> float:
    defined = [value for value in values if not math.isnan(value)]
    return sum(defined) / len(defined) if defined else math.nan


def corruption_errors(
    errors: Mapping[str, Sequence[float]],
    baseline: Mapping[str, Sequence[float]],
    clean_error: float,
    baseline_clean_error: float,
) -> CorruptionErrorSummary:
    """CE, mCE, relative CE and relative mCE (Hendrycks & Dietterich, ICLR 2019).

    `errors[c][s]`: the model's top-1 error E_{s,c} on corruption c at severity s (severities in
    the same order in both tables); `baseline[c][s]`: the baseline's E^base_{s,c}; `clean_error`
    and `baseline_clean_error`: E_clean and E^base_clean. All on one scale (rates or percents).

        CE_c          = Σ_s E_{s,c} / Σ_s E^base_{s,c}
        relative CE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean)
        mCE = mean_c CE_c,   relative mCE = mean_c relative CE_c

    The paper's baseline is AlexNet; here it is the normal model (T = identity), so the normal
    model's mCE is 1 and an emphasized variant below 1 is more robust to corruptions than it.

    Undefined ratios: CE_c is nan when the baseline makes no error at any severity of c, and
    relative CE_c is nan when Σ_s (E^base_{s,c} − E^base_clean) ≤ 0 (the baseline does not degrade
    under c; the ratio would be infinite or flip sign). The means skip nan corruptions and are nan
    only when every corruption is undefined. Whether a ratio is defined depends on the baseline
    alone, so every variant compared against the same baseline is averaged over the same
    corruptions.
    """
    model = _error_table("errors", errors)
    base = _error_table("baseline", baseline)
    if set(model) != set(base):
        raise ValueError(
            "errors and baseline must name the same corruptions; only in errors: "
            f"{sorted(set(model) - set(base))}, only in baseline: {sorted(set(base) - set(model))}"
        )
    if not model:
        raise ValueError("errors must name at least one corruption, got none")
    clean_errors = {"clean_error": clean_error, "baseline_clean_error": baseline_clean_error}
    for name, value in clean_errors.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite error >= 0, got {value}")

    ce: dict[str, float] = {}
    relative_ce: dict[str, float] = {}
    for corruption in model:  # the caller's order
        e, e_base = model[corruption], base[corruption]
        if e.shape != e_base.shape:
            raise ValueError(
                f"corruption {corruption!r} has {e.size} severities in errors but "
                f"{e_base.size} in baseline"
            )
        ce[corruption] = _ratio(float(e.sum()), float(e_base.sum()))
        relative_ce[corruption] = _ratio(
            float((e - clean_error).sum()), float((e_base - baseline_clean_error).sum())
        )
    return CorruptionErrorSummary(
        ce=ce,
        relative_ce=relative_ce,
        mce=_nanmean(list(ce.values())),
        relative_mce=_nanmean(list(relative_ce.values())),
    )


# --------------------------------------------------------------------------- strength curves


def area_under_curve(strengths: Sequence[float], accuracies: Sequence[float]) -> float:
    """Normalized area under an accuracy-vs-strength curve (trapezoidal rule).

    AUC = ∫ acc(s) ds / (s_max − s_min) over [s_min, s_max], with the points sorted by strength
    first: the mean accuracy over the strength range, so a constant accuracy a gives a. Needs at
    least two distinct strengths; a repeated strength is an error (the curve would be ambiguous).
    """
    x = np.asarray(strengths, dtype=np.float64)
    y = np.asarray(accuracies, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"strengths and accuracies must be 1-D of equal length, got {len(strengths)} "
            f"and {len(accuracies)} values"
        )
    if x.size < 2:
        raise ValueError(f"an area under a curve needs >= 2 points, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(
            f"strengths and accuracies must be finite, got {x.tolist()} and {y.tolist()}"
        )
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    repeated = x[1:][np.diff(x) == 0]
    if repeated.size:
        raise ValueError(f"strengths must be distinct, got {sorted(set(repeated.tolist()))} twice")
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0])


# --------------------------------------------------------------------------- adversarial


def robust_accuracy(correct_clean: ArrayLike, success: ArrayLike) -> float:
    """Robust accuracy: the fraction of all samples classified correctly and not successfully
    attacked, `mean(correct_clean & ~success)` (Carlini et al. 2019; Croce & Hein 2020).

    A misclassified clean sample is non-robust whatever the attack did, so `success` matters only
    where `correct_clean` is true (an attack's flag on a misclassified sample is ignored).
    """
    correct = _bool_vector("correct_clean", correct_clean)
    attacked = _bool_vector("success", success)
    _same_length(correct_clean=correct, success=attacked)
    return float(np.mean(correct & ~attacked))


def attack_success_rate(correct_clean: ArrayLike, success: ArrayLike) -> float:
    """Attack success rate: among the clean-correct samples, the fraction successfully attacked.

    Misclassified clean samples are excluded (there is nothing to attack). nan when no sample is
    classified correctly, since the rate is then undefined. So
    robust accuracy = clean accuracy × (1 − success rate).
    """
    correct = _bool_vector("correct_clean", correct_clean)
    attacked = _bool_vector("success", success)
    _same_length(correct_clean=correct, success=attacked)
    if not correct.any():
        return math.nan
    return float(np.mean(attacked[correct]))


def robust_accuracy_from_distances(
    correct_clean: ArrayLike, distances: ArrayLike, epsilon: float
) -> float:
    """Robust accuracy at budget ε from a minimisation attack's minimal adversarial distances.

    A sample is robust at ε when it is classified correctly and its minimal adversarial distance
    is > ε (an adversarial at distance exactly ε lies inside the closed ε-ball, so it counts as a
    success); `distances[i] = inf` means the attack found no adversarial. Distances of
    misclassified clean samples are ignored.
    """
    correct = _bool_vector("correct_clean", correct_clean)
    distance = _distance_vector(distances)
    _same_length(correct_clean=correct, distances=distance)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon}")
    return float(np.mean(correct & (distance > epsilon)))


def median_distance(distances: ArrayLike, correct_clean: ArrayLike) -> float:
    """Median minimal adversarial distance over the clean-correct samples (Rauber et al. 2017).

    Failed attacks (`inf`) are included, so an attack that fails on at least half of the samples
    has an infinite median — the honest answer: that attack cannot bound the median. nan when no
    sample is classified correctly. Misclassified clean samples are excluded.
    """
    correct = _bool_vector("correct_clean", correct_clean)
    distance = _distance_vector(distances)
    _same_length(distances=distance, correct_clean=correct)
    if not correct.any():
        return math.nan
    return float(np.median(distance[correct]))
