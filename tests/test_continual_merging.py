"""Formula tests of the continual merges (harness/math/continual_merging.py, harness/math/dop.py) and of TIES's
kept-entry count: every expected value is computed by hand in the comments, never by the code under test."""

from __future__ import annotations

import math

import pytest
import torch

from harness.math import continual_merging as C
from harness.math import merging as M
from harness.math.dop import dop_loss, dop_merge_matrix, min_norm_2, principal_subspace
from harness.method.registry import get_method


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ---- TIES kept-entry count -----------------------------------------------------------------------------------------


def test_ties_keeps_int_density_n_plus_one_entries_by_default_and_round_as_option():
    assert M.ties_keep_count(250, 0.2) == 51 and M.ties_keep_count(250, 0.2, "round") == 50
    assert M.ties_keep_count(5, 0.6) == 4 and M.ties_keep_count(5, 0.6, "round") == 3
    assert M.ties_keep_count(100, 0.29) == 29  # int(28.999…) + 1, as the code's float product truncates
    assert M.ties_keep_count(10, 1.0) == 10 and M.ties_keep_count(10, 0.01, "round") == 1
    tv = {"a": f64([5.0, -4.0, 3.0]), "b": f64([-2.0, 1.0])}
    code = M.ties_trim(tv, 0.6)  # int(3) + 1 = 4 of 5 kept: only the smallest |1| dropped
    assert code["a"].tolist() == [5, -4, 3] and code["b"].tolist() == [-2, 0]
    rounded = M.ties_trim(tv, 0.6, "round")  # 3 of 5 kept
    assert rounded["a"].tolist() == [5, -4, 3] and rounded["b"].tolist() == [0, 0]
    assert get_method("ties").Params().count == "ties-code"
    with pytest.raises(ValueError, match="count must be one of"):
        M.ties_keep_count(5, 0.5, "floor")


# ---- OPCM ----------------------------------------------------------------------------------------------------------


def test_opcm_split_rank_is_the_first_index_whose_cumulative_share_exceeds_alpha():
    s = f64([3.0, 2.0, 1.0])  # shares 0.5, 0.833…, 1
    assert C.opcm_split_rank(s, 0.5) == 1  # 0.5 is not > 0.5
    assert C.opcm_split_rank(s, 0.9) == 2
    assert C.opcm_split_rank(s, 0.4) == 0
    assert C.opcm_split_rank(torch.zeros(3, dtype=torch.float64), 0.5) == 0


def test_opcm_projection_and_rescale_hand_worked():
    """τ̄_1 = diag(3, 2, 1) (U = V = I up to signs), τ_2 = [[1,2,3],[4,5,6],[7,8,9]], α = 0.9 → r = 2: the diagonal and
    the leading 2×2 block of Uᵀτ_2V are zeroed → Π = [[0,0,3],[0,0,6],[7,8,0]]; S_2 = τ̄_1 + Π = [[3,0,3],[0,2,6],
    [7,8,1]], ‖S_2‖² = 172; n̄_2 = (√14 + √285)/2; λ_2 = √172/n̄_2; τ̄_2 = S_2/λ_2."""
    tau1 = {"w": torch.diag(f64([3.0, 2.0, 1.0]))}
    tau2 = {"w": f64([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])}
    merged, lam, norm_sum, rec = C.opcm_step(None, 1.0, 0.0, 1, tau1, 0.9)
    assert torch.equal(merged["w"], tau1["w"]) and lam == 1.0 and norm_sum == pytest.approx(math.sqrt(14))
    proj = C.opcm_project(tau1["w"], tau2["w"], 0.9)
    torch.testing.assert_close(proj, f64([[0.0, 0, 3], [0, 0, 6], [7, 8, 0]]), rtol=0, atol=1e-12)
    merged2, lam2, norm_sum2, rec2 = C.opcm_step(merged, lam, norm_sum, 2, tau2, 0.9)
    mean_norm = (math.sqrt(14) + math.sqrt(285)) / 2
    assert norm_sum2 == pytest.approx(math.sqrt(14) + math.sqrt(285), rel=1e-14)
    assert lam2 == pytest.approx(math.sqrt(172) / mean_norm, rel=1e-13) and rec2["lambda"] == lam2
    s2 = f64([[3.0, 0, 3], [0, 2, 6], [7, 8, 1]])
    torch.testing.assert_close(merged2["w"], s2 * mean_norm / math.sqrt(172), rtol=1e-12, atol=1e-12)
    # a rank-1 τ̄ = diag(3, 0, 0): "range" zeroes only P_00 (its null-space singular vectors are arbitrary)
    ones = torch.ones(3, 3, dtype=torch.float64)
    torch.testing.assert_close(C.opcm_project(torch.diag(f64([3.0, 0, 0])), ones, 0.5),
                               ones - torch.diag(f64([1.0, 0, 0])), rtol=0, atol=1e-12)
    # α = 0.5 → r = 1: only the diagonal goes (the 1×1 block is on it)
    torch.testing.assert_close(C.opcm_project(tau1["w"], tau2["w"], 0.5), f64([[0.0, 2, 3], [4, 0, 6], [7, 8, 0]]),
                               rtol=0, atol=1e-12)


# ---- FusionBench's pairwise continual TIES ----------------------------------------------------------------------


def test_ties_pairwise_hand_worked():
    """λ = 0.5, density 0.5 (n = 4 → int(2) + 1 = 3 kept of each), merge sum:
    τ̄_1 = 0.5·(4, −2, 1, 0.5) = (2, −1, 0.5, 0.25); τ_2 = (−3, −1, 2, 0.1).
    Trimmed: (2, −1, 0.5, 0) and (−3, −1, 2, 0); masses (−1, −2, 2.5, 0) → signs (−, −, +, 0); the zero sign takes the
    majority sgn(−1 −1 +1) = −; agreeing sums (−3, −2, 2.5, 0); τ̄_2 = τ̄_1 + 0.5·that = (0.5, −2, 1.75, 0.25)."""
    m1 = C.ties_pairwise_step(None, {"w": f64([4.0, -2, 1, 0.5])}, 0.5, 0.5)
    assert m1["w"].tolist() == [2.0, -1.0, 0.5, 0.25]
    inc = C.ties_pairwise_increment(m1, {"w": f64([-3.0, -1, 2, 0.1])}, 0.5)
    assert inc["w"].tolist() == [-3.0, -2.0, 2.5, 0.0]
    m2 = C.ties_pairwise_step(m1, {"w": f64([-3.0, -1, 2, 0.1])}, 0.5, 0.5)
    assert m2["w"].tolist() == [0.5, -2.0, 1.75, 0.25]


def test_ties_resolve_sum_and_majority_zero_sign():
    """a = (1, 2, −3, 1), b = (−1, 1, −1, 1): masses (0, 3, −4, 2) → signs (0, +, −, +), majority sgn(1) = +, so entry 0
    keeps its positive part: sums (1, 3, −4, 2), × λ = 0.5. With zero_sign "zero" entry 0 merges to 0; "mean" divides
    by the agreeing counts (1, 2, 2, 2)."""
    acc = M.ties_accumulate(M.ties_accumulate(None, {"w": f64([1.0, 2, -3, 1])}), {"w": f64([-1.0, 1, -1, 1])})
    assert M.ties_resolve(acc, 0.5, merge="sum", zero_sign="majority")["w"].tolist() == [0.5, 1.5, -2.0, 1.0]
    assert M.ties_resolve(acc, 0.5, merge="sum")["w"].tolist() == [0.0, 1.5, -2.0, 1.0]
    assert M.ties_resolve(acc, 1.0, merge="mean", zero_sign="majority")["w"].tolist() == [1.0, 1.5, -2.0, 1.0]
    # majority 0 as well: where(γ > 0, τ > 0, τ < 0) keeps the negative entries (the TIES code's disjoint_merge)
    acc0 = M.ties_accumulate(M.ties_accumulate(None, {"w": f64([1.0, 2, -3])}), {"w": f64([-1.0, 1, -1])})
    assert M.ties_resolve(acc0, 1.0, merge="sum", zero_sign="majority")["w"].tolist() == [-1.0, 3.0, -4.0]


# ---- continual Fisher merging --------------------------------------------------------------------------------------


def test_fisher_merge_hand_worked_and_floor():
    """τ_1 = (1, 2, 5), F_1 = (1, 0, 0); τ_2 = (3, 4, 7), F_2 = (1, 2, 0), floor 0 except the last entry:
    ((1·1 + 1·3)/2, (0·2 + 2·4)/2) = (2, 4); with floor 1e-6 the last entry (no Fisher) is the plain mean 6."""
    m1, s1 = C.fisher_merge_step(None, None, {"w": f64([1.0, 2, 5])}, {"w": f64([1.0, 0, 0])}, floor=1e-6)
    assert m1["w"].tolist() == [1.0, 2.0, 5.0]
    m2, s2 = C.fisher_merge_step(m1, s1, {"w": f64([3.0, 4, 7])}, {"w": f64([1.0, 2, 0])}, floor=1e-6)
    torch.testing.assert_close(m2["w"], f64([2.0, 4.0, 6.0]), rtol=1e-5, atol=0)
    torch.testing.assert_close(s2["w"], f64([2.0, 2.0, 0.0]) + 2e-6, rtol=1e-15, atol=0)


def test_fisher_merge_online_equals_batch_fisher_weighted_average():
    g = torch.Generator().manual_seed(0)
    taus = [{"w": torch.randn(4, 3, generator=g, dtype=torch.float64)} for _ in range(4)]
    fs = [{"w": torch.rand(4, 3, generator=g, dtype=torch.float64)} for _ in range(4)]
    merged = s = None
    for tau, f in zip(taus, fs):
        merged, s = C.fisher_merge_step(merged, s, tau, f, floor=1e-6)
    batch = sum((f["w"] + 1e-6) * t["w"] for t, f in zip(taus, fs)) / sum(f["w"] + 1e-6 for f in fs)
    torch.testing.assert_close(merged["w"], batch, rtol=1e-13, atol=1e-15)


# ---- DoP -----------------------------------------------------------------------------------------------------------


def test_min_norm_2_cases():
    assert min_norm_2(16.0, -16.0, 16.0) == 0.5  # (16 + 16) / (16 + 16 + 32)
    assert min_norm_2(1.0, 0.0, 3.0) == 0.75  # (3 − 0) / (1 + 3)
    assert min_norm_2(1.0, 2.0, 9.0) == 0.999  # ⟨g1,g2⟩ ≥ ⟨g1,g1⟩
    assert min_norm_2(9.0, 2.0, 1.0) == 0.001  # ⟨g1,g2⟩ ≥ ⟨g2,g2⟩


def test_dop_loss_and_rank_rule_hand_worked():
    tau = torch.diag(f64([2.0, 0.0]))
    u, s, v = principal_subspace(tau, 0.99999, "inclusive")
    assert s.tolist() == [2.0]
    # D = [[1, 2], [3, 4]]: ‖2·row 1‖² = 4·5 = 20, ‖2·column 1‖² = 4·10 = 40
    d = f64([[1.0, 2.0], [3.0, 4.0]])
    assert float(dop_loss(d, u, s, v, "uv")) == pytest.approx(60.0, rel=1e-14)
    assert float(dop_loss(d, u, s, v, "u")) == pytest.approx(20.0, rel=1e-14)
    assert float(dop_loss(d, u, s, v, "v")) == pytest.approx(40.0, rel=1e-14)
    # the code's rule stops before the direction reaching ε: a rank-1 τ keeps no direction
    assert principal_subspace(tau, 0.99999, "code")[1].numel() == 0
    assert principal_subspace(torch.diag(f64([3.0, 1.0])), 0.99999, "code")[1].tolist() == [3.0]


def test_dop_fixed_weights_converge_to_the_hand_computed_minimiser():
    """τ_m = diag(2, 0), τ_n = diag(1, 0) (W0 = 0), α = 0.5 without MGDA: on entry (1,1) the objective is
    0.5·8(w − 2)² + 0.5·2(w − 1)², minimised at (16 + 2)/10 = 1.8; off-diagonal entries of row/column 1 go to 0;
    entry (2,2) has no loss and keeps its start (0 + 0)/2 = 0."""
    w0 = torch.zeros(2, 2, dtype=torch.float64)
    w, c = dop_merge_matrix(w0, torch.diag(f64([2.0, 0])), torch.diag(f64([1.0, 0])), lr=1e-3, steps=3000,
                            mgda=False, alpha=0.5, rank_rule="inclusive")
    assert c == (0.5, 0.5)
    torch.testing.assert_close(w, torch.diag(f64([1.8, 0.0])), rtol=0, atol=5e-3)


def test_dop_one_mgda_step_weights_hand_worked():
    """Same τ's, start W = diag(1.5, 0): L_m = 8·0.25 = 2, ∂L_m/∂w11 = 16·(−0.5) = −8 → normalised −4; L_n = 2·0.25 =
    0.5, ∂L_n/∂w11 = 4·0.5 = 2 → normalised 4; γ = (16 + 16)/(16 + 16 + 32) = 0.5; EMA from (0.8, 0.2) with
    β = 0.999: (0.999·0.8 + 0.001·0.5, 0.999·0.2 + 0.001·0.5) = (0.7997, 0.2003)."""
    w0 = torch.zeros(2, 2, dtype=torch.float64)
    _, c = dop_merge_matrix(w0, torch.diag(f64([2.0, 0])), torch.diag(f64([1.0, 0])), steps=1, rank_rule="inclusive")
    assert c[0] == pytest.approx(0.7997, abs=1e-12) and c[1] == pytest.approx(0.2003, abs=1e-12)
    _, c_plain = dop_merge_matrix(w0, torch.diag(f64([2.0, 0])), torch.diag(f64([1.0, 0])), steps=1, ema=False,
                                  rank_rule="inclusive")
    assert c_plain == (0.5, 0.5)
