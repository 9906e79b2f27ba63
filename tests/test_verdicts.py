"""The verdict rule (harness/report/verdicts.py): standard errors, the paper's seed count, tolerance floor, printed Δ."""

from __future__ import annotations

import math

import pytest

from harness.report import verdicts as v


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        ((80.0, 0.2, 3, 80.9), {}, v.REPRODUCED),  # |Δ| 0.9 ≤ tolerance 1.0
        ((80.0, 0.2, 3, 81.0), {}, v.REPRODUCED),  # on the bound
        ((80.0, 0.2, 3, 81.2), {}, v.DIFFERS),  # 1.2 > max(1.0, 2·0.2/√3)
        # σ_ours = 2 over 3 seeds: SE 1.155, bound 2.309 (2σ = 4 would call 82.4 reproduced)
        ((80.0, 2.0, 3, 82.3), {}, v.REPRODUCED),
        ((80.0, 2.0, 3, 82.4), {}, v.DIFFERS),
        ((80.0, 2.0, 3, 77.6), {}, v.DIFFERS),  # symmetric
        # paper std 0.8 with 4 seeds stated: SE_pub 0.4; ours 1.2 over 4: SE 0.6 → bound 2·√0.52 = 1.442
        ((80.0, 1.2, 4, 81.5, 0.8), {"n_published": 4}, v.DIFFERS),
        ((80.0, 1.2, 4, 81.4, 0.8), {"n_published": 4}, v.REPRODUCED),
        # no seed count: σ_pub is taken as a standard error → bound 2·√(0.36 + 0.64) = 2.0
        ((80.0, 1.2, 4, 81.9, 0.8), {}, v.REPRODUCED),
        ((80.0, 1.2, 4, 82.1, 0.8), {}, v.DIFFERS),
        ((80.0, math.nan, 1, 81.5), {}, v.DIFFERS),  # one seed: no spread, tolerance only
        ((80.0, 5.0, 1, 81.5), {}, v.DIFFERS),  # a std with n = 1 is ignored
        ((80.0, math.nan, 1, 81.5), {"tolerance": 2.0}, v.REPRODUCED),
        ((80.0, math.nan, 1, 80.0), {"tolerance": 0.0}, v.REPRODUCED),
        ((None, None, 0, 80.0), {}, v.NOT_RUN),
        ((math.nan, math.nan, 0, 80.0), {}, v.NOT_RUN),
        ((80.0, 0.1, 3, 80.0), {"implemented": False}, v.NO_IMPLEMENTATION),
        ((None, None, 0, 80.0), {"implemented": False}, v.NO_IMPLEMENTATION),
        ((80.0, 0.1, 3, 95.0), {"same_protocol": False}, v.PROTOCOL_DIFFERS),
        ((None, None, 0, 95.0), {"same_protocol": False}, v.NOT_RUN),
        ((80.0, 0.1, 3, None), {}, v.NO_REFERENCE),
    ],
)
def test_verdict_rule(args, kwargs, expected):
    assert v.verdict(*args, **kwargs) == expected


def test_bound_is_two_standard_errors_of_the_difference():
    assert v.bound_of(2.0, 3, None, 1.0) == pytest.approx(2 * 2.0 / math.sqrt(3))
    assert v.bound_of(1.2, 4, 0.8, 1.0, n_published=4) == pytest.approx(2 * math.sqrt(0.36 + 0.16))
    assert v.bound_of(1.2, 4, 0.8, 1.0) == pytest.approx(2.0)
    assert v.bound_of(0.1, 3, None, 1.0) == 1.0  # the tolerance floor
    assert v.bound_of(5.0, 1, None, 0.5) == 0.5
    assert v.standard_error(3.0, 9) == pytest.approx(1.0) and v.standard_error(None, 3) == 0.0


def test_verdict_uses_unrounded_delta_and_printed_delta_agrees():
    # Δ = −0.996 rounds to −1.00 = the bound: reproduced, and the printed Δ does not contradict it
    assert v.verdict(80.004, 0.0, 3, 81.0) == v.REPRODUCED
    assert v.delta_text(80.004 - 81.0, 1.0) == "-1.00"
    # Δ = +1.004 would print as +1.00 (inside) but is outside: printed with the decimals that show it
    assert v.verdict(81.004, 0.0, 3, 80.0) == v.DIFFERS
    assert v.delta_text(1.004, 1.0) == "+1.004"
    assert v.delta_text(-1.0004, 1.0) == "-1.0004"
    assert v.delta_text(0.5, 1.0) == "+0.50" and v.delta_text(math.nan, 1.0) == "–"


def test_rule_text_states_standard_errors():
    assert v.DEFAULT_TOLERANCE == 1.0
    assert "σ_ours²/n_ours + σ_pub²/n_pub" in v.VERDICT_RULE and "standard error" in v.VERDICT_RULE
