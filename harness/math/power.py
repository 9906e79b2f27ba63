"""How many seeds a paired comparison needs — pure functions.

Two methods run on the same seeds give paired differences d_s (e.g. of A_last) with standard deviation σ_d. The
95 % paired t interval is mean(d) ± t_{0.975, n−1}·σ_d/√n. A true difference δ is *resolved* with power 1 − β when
the interval excludes zero with that probability; the usual t approximation of it (e.g. Julious 2004, "Sample sizes
for clinical trials with Normal data", eq. for paired designs) is

    n = min { n ≥ 2 : (t_{1−α/2, n−1} + t_{1−β, n−1}) · σ_d / √n ≤ δ }.

With power 0.5 (t_{0.5} = 0) this is the smallest n whose interval half-width is at most δ.
"""

from __future__ import annotations

import math

MAX_SEEDS = 100_000


def seeds_to_resolve(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """min {n ≥ 2 : (t_{1−α/2,n−1} + t_{power,n−1})·sd/√n ≤ delta} (module docstring); sd = 0 → 2."""
    from scipy.stats import t

    if delta <= 0 or sd < 0 or not 0 < alpha < 1 or not 0.5 <= power < 1:
        raise ValueError(f"need delta > 0, sd >= 0, 0 < alpha < 1, 0.5 <= power < 1; got {delta}, {sd}, {alpha}, {power}")
    n = 2
    while n <= MAX_SEEDS:
        if (t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * sd / math.sqrt(n) <= delta:
            return n
        n += 1
    raise ValueError(f"more than {MAX_SEEDS} seeds needed for sd {sd}, delta {delta}")


def paired_interval(diffs: list[float], alpha: float = 0.05) -> tuple[float, float, float, float]:
    """(mean, sd (ddof = 1), low, high) of the paired differences: mean ± t_{1−α/2,n−1}·sd/√n (n ≥ 2)."""
    from scipy.stats import t

    n = len(diffs)
    if n < 2:
        raise ValueError(f"a paired interval needs >= 2 differences, got {n}")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half
