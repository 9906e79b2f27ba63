"""Paired statistics (harness/report/paired.py) on hand-made differences, against closed forms; the report's pairing."""

import math

import numpy as np
import pandas as pd
import pytest

from harness.report.compare import paired_table
from harness.report.paired import compare, sign_test, t_interval


def test_t_interval_df1_matches_the_cauchy_closed_form():
    # n = 2: t with 1 df is Cauchy, t_{0.975,1} = tan(π·0.475); d = (1, 3): mean 2, s = √2, half = t·√2/√2 = t.
    lo, hi = t_interval([1.0, 3.0])
    t = math.tan(math.pi * 0.475)
    assert lo == pytest.approx(2 - t, rel=1e-9) and hi == pytest.approx(2 + t, rel=1e-9)


def test_t_interval_df2_matches_its_closed_form():
    # n = 3: t_{p,2} = (2p−1)/√(2p(1−p)); d = (0, 1, 5): mean 2, s² = ((−2)² + (−1)² + 3²)/2 = 7.
    p = 0.975
    t = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    half = t * math.sqrt(7) / math.sqrt(3)
    lo, hi = t_interval([0.0, 1.0, 5.0])
    assert (lo, hi) == (pytest.approx(2 - half, rel=1e-9), pytest.approx(2 + half, rel=1e-9))
    assert all(math.isnan(v) for v in t_interval([4.0]))


def test_sign_test_exact_binomial():
    # 4 wins, 1 loss, 1 tie: m = 5, p = 2·(C(5,0) + C(5,1))/2⁵ = 12/32.
    assert sign_test([1, 2, 0.5, 3, -1, 0]) == (4, 1, 1, pytest.approx(12 / 32))
    # 6 of 6 wins: p = 2·C(6,0)/2⁶; 3 wins, 3 losses: 2·(1+6+15+20)/64 > 1, capped at 1.
    assert sign_test([1] * 6)[3] == pytest.approx(2 / 64)
    assert sign_test([1, 1, -1, -1, 1, -1])[3] == 1.0
    assert sign_test([0, 0]) == (0, 0, 2, 1.0)


def test_t_interval_has_nominal_coverage_by_simulation():
    """20,000 simulated experiments of n normal differences per n: the share of 95 % intervals that hold the true
    mean is 0.95 ± 4 binomial standard errors (0.0062; measured 0.951, 0.954, 0.952 for n = 3, 5, 10). A z interval (1.96), a ddof = 0 std or the percentile bootstrap
    of the mean fall outside (the bootstrap covered 0.905 at n = 10)."""
    rng = np.random.default_rng(0)
    reps, se = 20_000, math.sqrt(0.95 * 0.05 / 20_000)
    for n in (3, 5, 10):
        x = rng.normal(1.5, 2.0, size=(reps, n))
        lo, hi = np.array([t_interval(row) for row in x]).T
        coverage = float(((lo <= 1.5) & (1.5 <= hi)).mean())
        assert abs(coverage - 0.95) < 4 * se, (n, coverage)


def test_compare_handles_few_seeds_and_zero_variance():
    d = np.arange(12, dtype=float)
    assert compare(d[:10]).interval == "t" and compare(d[:10]).lo == pytest.approx(t_interval(d[:10])[0])
    assert compare(d[:1]).interval == "none" and math.isnan(compare(d[:1]).lo)
    few = compare([1.0, 2.0, 0.5])
    assert "only 3 paired seed(s) (< 5)" in few.warning and few.interval == "t"
    assert compare([1.0, 2.0, 0.5, 3.0, 1.0]).warning == ""
    # every difference equal: no zero-width interval; the mean and the sign test remain
    same = compare([0.4] * 6)
    assert same.interval == "zero variance" and math.isnan(same.lo) and math.isnan(same.hi)
    assert same.mean == pytest.approx(0.4) and (same.wins, same.sign_p) == (6, pytest.approx(2 / 64))
    assert "every difference is equal" in same.warning
    identical = compare([0.0] * 5)
    assert identical.interval == "zero variance" and identical.ties == 5 and identical.sign_p == 1.0


def test_paired_table_pairs_only_shared_seeds():
    rows = [  # method, seed, a_last
        ("new", 0, 0.50), ("new", 1, 0.60), ("new", 2, 0.70), ("ref", 0, 0.40), ("ref", 1, 0.65), ("ref", 3, 0.10),
    ]
    runs = pd.DataFrame([{"benchmark": "b", "method": m, "seed": s, "order_seed": None, "a_last": a, "done": True}
                         for m, s, a in rows])
    t = paired_table(runs, ["ref"]).iloc[0]
    # shared seeds 0, 1: differences +10 and −5 points
    assert (t["method"], t["against"], t["n"]) == ("new", "ref", 2)
    assert t["mean_diff"] == pytest.approx(2.5)
    assert (t["wins"], t["losses"], t["ties"]) == (1, 1, 0)
    lo, hi = t_interval([10.0, -5.0])
    assert t["ci_lo"] == pytest.approx(lo) and t["ci_hi"] == pytest.approx(hi)
    assert paired_table(runs, ["absent"]).empty


def test_paired_table_has_no_mirror_rows_and_shows_the_focus_methods_first():
    vals = {"a": [0.5, 0.6, 0.7], "b": [0.4, 0.5, 0.9], "c": [0.3, 0.2, 0.1]}
    runs = pd.DataFrame([{"benchmark": "x", "method": m, "seed": s, "order_seed": None, "a_last": v, "done": True}
                         for m, vs in vals.items() for s, v in enumerate(vs)])
    t = paired_table(runs, ["b", "c"])
    assert list(zip(t["method"], t["against"])) == [("a", "b"), ("a", "c"), ("b", "c")]  # no ("c", "b")
    focus = paired_table(runs, ["a", "b"], methods=["c"])  # `compare --method c --against a,b`
    assert list(zip(focus["method"], focus["against"])) == [("c", "a"), ("c", "b")]
    assert focus["mean_diff"].iloc[0] == pytest.approx(100 * np.mean([-0.2, -0.4, -0.6]))
    assert all("only 3 paired seed(s)" in w for w in focus["warning"])
