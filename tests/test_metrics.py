import math

import pytest

from harness.math import metrics

# Hand-worked 3-task accuracy matrix (rows: after task t; columns: task j ≤ t) and test-set sizes.
R = [
    [0.9],
    [0.6, 0.8],
    [0.5, 0.7, 0.9],
]
N = [10, 30, 60]


def test_sample_weighted_curve():
    # t=1: (0.6·10 + 0.8·30) / 40 = 30/40; t=2: (5 + 21 + 54) / 100 = 0.80
    assert metrics.acc_sample_weighted(R, N) == pytest.approx([0.9, 0.75, 0.80], abs=1e-12)


def test_task_mean_curve():
    assert metrics.acc_task_mean(R) == pytest.approx([0.9, 0.7, 0.7], abs=1e-12)


def test_a_last_and_a_avg():
    curve = metrics.acc_sample_weighted(R, N)
    assert metrics.a_last(curve) == pytest.approx(0.80, abs=1e-12)
    assert metrics.a_avg(curve) == pytest.approx((0.9 + 0.75 + 0.80) / 3, abs=1e-12)


def test_forgetting_uses_best_ever_not_first():
    # task 0: best of R[0][0]=0.9, R[1][0]=0.6 → 0.9 − 0.5 = 0.4; task 1: 0.8 − 0.7 = 0.1 → mean 0.25
    assert metrics.forgetting_chaudhry(R) == pytest.approx(0.25, abs=1e-12)
    assert metrics.forgetting_mammoth(R) == pytest.approx(0.25, abs=1e-12)  # no task improves at the end
    R2 = [[0.5], [0.9, 0.8], [0.7, 0.8, 0.9]]  # task 0 improved after task 1: best-ever is 0.9
    assert metrics.forgetting_chaudhry(R2) == pytest.approx(((0.9 - 0.7) + 0.0) / 2, abs=1e-12)


# The hand case: task 0 is best after the final task (0.825 > 0.80), task 1 drops 0.90 → 0.625.
R_FINAL_BEST = [[0.80], [0.70, 0.90], [0.825, 0.625, 0.95]]


def test_forgetting_chaudhry_takes_the_best_before_the_final_task():
    # task 0: max(0.80, 0.70) − 0.825 = −0.025; task 1: 0.90 − 0.625 = 0.275 → mean 0.125 (12.50 %)
    assert metrics.forgetting_chaudhry(R_FINAL_BEST) == pytest.approx(0.125, abs=1e-12)


def test_forgetting_mammoth_includes_the_final_row_so_no_term_is_negative():
    # task 0: max(0.80, 0.70, 0.825) − 0.825 = 0; task 1: 0.275 → mean 0.1375 (13.75 %)
    assert metrics.forgetting_mammoth(R_FINAL_BEST) == pytest.approx(0.1375, abs=1e-12)
    s = metrics.summarize(R_FINAL_BEST, [10, 10, 10])
    assert s["forgetting"] == pytest.approx(0.125, abs=1e-12)
    assert s["forgetting_mammoth"] == pytest.approx(0.1375, abs=1e-12)


def test_bwt():
    # (0.5 − 0.9) and (0.7 − 0.8) → mean −0.25
    assert metrics.bwt(R) == pytest.approx(-0.25, abs=1e-12)


def test_single_task_has_no_forgetting_defined():
    assert math.isnan(metrics.forgetting_chaudhry([[0.7]]))
    assert math.isnan(metrics.forgetting_mammoth([[0.7]]))
    assert math.isnan(metrics.bwt([[0.7]]))


def test_summarize_reports_both_definitions():
    s = metrics.summarize(R, N, task_aware=[[1.0], [1.0, 0.9], [1.0, 0.9, 0.95]])
    assert s["a_last"] == pytest.approx(0.80)
    assert s["a_last_task_mean"] == pytest.approx(0.7)
    assert s["task_aware_a_last"] == pytest.approx((10 + 27 + 57) / 100)
