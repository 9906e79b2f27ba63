"""Seeds needed to resolve a paired difference (harness/math/power.py), on hand-computed cases."""

import math

import pytest

from harness.math.power import paired_interval, seeds_to_resolve


def test_half_width_rule_by_hand():
    # sd = 1, δ = 1, power 0.5: half-width t_{.975,n−1}/√n = 8.99 (n=2) … 1.050 (n=6), 0.925 (n=7) → 7
    assert seeds_to_resolve(1.0, 1.0, power=0.5) == 7
    # δ = 2: 2.776/√5 = 1.241 ≤ 2 and 3.182/√4 = 1.591 ≤ 2, 4.303/√3 = 2.484 > 2 → 4
    assert seeds_to_resolve(1.0, 2.0, power=0.5) == 4


def test_power_080_by_hand_and_scaling():
    # sd = 1, δ = 1, power 0.8: (t_{.975,9} + t_{.8,9})/√10 = (2.262 + 0.883)/3.162 = 0.995 ≤ 1, n = 9: 1.049 > 1 → 10
    assert seeds_to_resolve(1.0, 1.0) == 10
    assert seeds_to_resolve(2.0, 2.0) == seeds_to_resolve(1.0, 1.0)  # only sd/δ matters
    assert seeds_to_resolve(1.0, 0.5) > seeds_to_resolve(1.0, 1.0) > seeds_to_resolve(1.0, 2.0)
    assert seeds_to_resolve(0.0, 1.0) == 2
    with pytest.raises(ValueError):
        seeds_to_resolve(1.0, 0.0)


def test_paired_interval_by_hand():
    mean, sd, lo, hi = paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and sd == 1.0
    assert hi - mean == pytest.approx(4.302652729911275 / math.sqrt(3))  # t_{.975,2} = 4.3027
    assert lo == pytest.approx(2 * mean - hi)
