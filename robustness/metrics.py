"""Robustness metrics. Pure numpy/scipy; no torch, no Ray."""

from __future__ import annotations

from scipy.stats import binomtest


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy of `correct` / `n` (Wilson 1927)."""
    if n <= 0:
        raise ValueError(f"a confidence interval needs n > 0 samples, got n={n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be within 0..n={n}, got {correct}")
    interval = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)
