"""Paired comparison statistics over seeds — pure functions on the per-seed differences d_i = x_i − y_i of two
methods run with the same seed (same seed ⇒ same stream, split and initialisation, so the differences cancel the
seed's own effect).

* mean paired difference d̄ = (1/n) Σ d_i;
* 95 % t-interval d̄ ± t_{0.975, n−1} · s_d / √n, s_d the sample std (ddof = 1): the paired-t confidence interval
  (Student 1908); undefined for n < 2;
* for n ≥ BOOTSTRAP_MIN_N the percentile bootstrap interval instead (Efron & Tibshirani 1993, ch. 13): B resamples
  of the n differences with replacement, seeded, and the 2.5 / 97.5 % quantiles of their means;
* sign test (Dixon & Mood 1946): wins w = #{d_i > 0}, losses l = #{d_i < 0}, ties dropped; exact two-sided
  p = min(1, 2 · Σ_{k ≤ min(w, l)} C(w + l, k) / 2^{w + l}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

BOOTSTRAP_MIN_N = 10
BOOTSTRAP_RESAMPLES = 10_000


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (scipy.stats.t.ppf)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def t_interval(d: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """d̄ ± t_{(1+c)/2, n−1} · s / √n; (NaN, NaN) for n < 2."""
    x = np.asarray(d, dtype=float)
    n = len(x)
    if n < 2:
        return math.nan, math.nan
    half = t_quantile((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean() - half), float(x.mean() + half)


def bootstrap_interval(d: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean: `resamples` draws of n indices with replacement from
    numpy.random.default_rng(seed), the (1−c)/2 and (1+c)/2 quantiles (linear interpolation) of their means."""
    x = np.asarray(d, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def sign_test(d: Sequence[float]) -> tuple[int, int, int, float]:
    """(wins, losses, ties, exact two-sided p) of the sign test; ties are dropped; p = 1 with no untied pair."""
    x = np.asarray(d, dtype=float)
    w, l = int((x > 0).sum()), int((x < 0).sum())
    m = w + l
    if m == 0:
        return w, l, len(x), 1.0
    tail = sum(math.comb(m, k) for k in range(min(w, l) + 1)) / 2**m
    return w, l, len(x) - m, min(1.0, 2 * tail)


@dataclass
class Paired:
    n: int
    mean: float
    lo: float
    hi: float
    interval: str  # "t" | "bootstrap" | "none"
    wins: int
    losses: int
    ties: int
    sign_p: float


def compare(d: Sequence[float], confidence: float = 0.95, seed: int = 0) -> Paired:
    """Summary of paired differences: mean, a t-interval (bootstrap when n ≥ BOOTSTRAP_MIN_N), sign-test counts."""
    x = np.asarray(d, dtype=float)
    n = len(x)
    if n >= BOOTSTRAP_MIN_N:
        (lo, hi), kind = bootstrap_interval(x, confidence, seed=seed), "bootstrap"
    else:
        (lo, hi), kind = t_interval(x, confidence), "t" if n >= 2 else "none"
    w, l, ties, p = sign_test(x)
    return Paired(n, float(x.mean()) if n else math.nan, lo, hi, kind, w, l, ties, p)
