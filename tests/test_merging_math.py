"""Exact checks of the merge rules in harness/math/merging.py on small problems (float64, tolerances at rounding level)."""

from __future__ import annotations

import pytest
import torch

from harness.math import merging as M
from methods.pm import SIGNS, PMParams

NAMES = ("blocks.0.attn.qkv.k", "blocks.0.attn.qkv.v")
SHAPES = {NAMES[0]: (4, 5), NAMES[1]: (3, 6)}


def rand_tensors(g: torch.Generator, scale: float = 1.0) -> M.Tensors:
    return {n: scale * torch.randn(SHAPES[n], generator=g, dtype=torch.float64) for n in NAMES}


def rand_fisher(g: torch.Generator) -> M.Tensors:
    return {n: 0.1 + 2.0 * torch.rand(SHAPES[n], generator=g, dtype=torch.float64) for n in NAMES}


def total_loss(alpha: float, theta_prev, delta, theta_stars, fishers, names=NAMES) -> float:
    """Σ_i L_i(θ̂_{t−1} + αΔ), L_i(θ) = ½ (θ − θ*_i)ᵀ F_i (θ − θ*_i) with diagonal F_i."""
    return sum(
        0.5 * float((f[n] * (theta_prev[n] + alpha * delta[n] - ts[n]).square()).sum())
        for ts, f in zip(theta_stars, fishers)
        for n in names
    )


def segment_minimiser(fn) -> float:
    """argmin over [0, 1] of a quadratic in α, from its exact values at 0, ½, 1."""
    f0, fh, f1 = fn(0.0), fn(0.5), fn(1.0)
    a = 2.0 * (f1 - 2.0 * fh + f0)
    b = f1 - f0 - a
    assert a > 0
    return min(max(-b / (2.0 * a), 0.0), 1.0)


def test_pm_closed_form_is_the_segment_minimiser_and_streaming_equals_batch():
    g = torch.Generator().manual_seed(0)
    theta_hat = {n: torch.zeros(SHAPES[n], dtype=torch.float64) for n in NAMES}  # relative to W0
    theta_stars, fishers = [], []
    s0 = s1 = dhat = None
    interior = 0
    for t in range(7):
        delta = rand_tensors(g)
        theta_stars.append({n: theta_hat[n] + delta[n] for n in NAMES})
        fishers.append(rand_fisher(g))
        a_batch = M.pm_alpha_batch(theta_stars, fishers, theta_hat, delta)
        a_stream = M.pm_alpha_stream(s0, s1, dhat, fishers[-1], delta)
        assert a_stream == pytest.approx(a_batch, rel=1e-12, abs=1e-15)
        pm_batch = M.pm_alpha_batch(theta_stars, fishers, theta_hat, delta, per_module=True)
        pm_stream = M.pm_alpha_stream(s0, s1, dhat, fishers[-1], delta, per_module=True)
        for n in NAMES:
            assert pm_stream[n] == pytest.approx(pm_batch[n], rel=1e-12, abs=1e-15)
        if t == 0:
            assert a_batch == 1.0 and a_stream == 1.0
        # The global α minimises the total quadratic loss along the segment θ̂_{t−1} + αΔ, α ∈ [0, 1] ...
        fn = lambda a: total_loss(a, theta_hat, delta, theta_stars, fishers)  # noqa: E731
        assert a_batch == pytest.approx(segment_minimiser(fn), rel=1e-9, abs=1e-12)
        grid = [i / 500 for i in range(501)]
        best = min(fn(a) for a in grid)
        assert fn(a_batch) <= best * (1 + 1e-14)
        interior += 0.0 < a_batch < 1.0
        # ... and each per-module α minimises its module's part.
        for n in NAMES:
            fn_m = lambda a: total_loss(a, theta_hat, delta, theta_stars, fishers, names=(n,))  # noqa: E731
            assert pm_batch[n] == pytest.approx(segment_minimiser(fn_m), rel=1e-9, abs=1e-12)
        s0, s1, dhat = M.pm_stream_update(s0, s1, dhat, fishers[-1], delta, a_stream)
        theta_hat = {n: theta_hat[n] + a_batch * delta[n] for n in NAMES}
        for n in NAMES:
            torch.testing.assert_close(dhat[n], theta_hat[n], rtol=1e-13, atol=1e-15)
    assert interior >= 4  # the check above is not only about clipped cases


def test_pm_alpha_clips_to_the_segment():
    one = {n: torch.ones(SHAPES[n], dtype=torch.float64) for n in NAMES}
    zero = {n: torch.zeros(SHAPES[n], dtype=torch.float64) for n in NAMES}
    # An old task whose optimum lies beyond θ̂ + Δ pulls α above 1 → clipped to 1 (the loss still falls at α = 1).
    beyond = {n: 4.0 * one[n] for n in NAMES}
    a = M.pm_alpha_batch([beyond, one], [one, one], zero, one)
    assert a == 1.0
    assert total_loss(1.0, zero, one, [beyond, one], [one, one]) < total_loss(0.999, zero, one, [beyond, one], [one, one])
    # An old task behind θ̂ that is much stiffer pushes the unclipped α below 0 → clipped to 0.
    behind = {n: -1.0 * one[n] for n in NAMES}
    stiff = {n: 100.0 * one[n] for n in NAMES}
    assert M.pm_alpha_batch([behind, one], [stiff, one], zero, one) == 0.0
    # No curvature along Δ (den = 0) or a zero task vector → α = 1.
    assert M.pm_alpha_stream(zero, zero, zero, zero, one) == 1.0
    assert M.pm_alpha_stream(one, one, zero, one, zero) == 1.0
    assert M.clipped_ratio(float("nan"), 1.0) == 1.0 and M.clipped_ratio(1.0, -1.0) == 1.0


def test_mean_of_the_three_perturbed_losses_adds_the_curvature_along_delta():
    """E_s L(θ + sεΔ), s ∈ {0, +1, −1} uniform = L(θ) + (ε²/3) ΔᵀHΔ, exactly, for a quadratic L (full H)."""
    g = torch.Generator().manual_seed(1)
    d = 12
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    h = q.T @ q + torch.eye(d, dtype=torch.float64)
    c = torch.randn(d, generator=g, dtype=torch.float64)

    def loss(theta: torch.Tensor) -> float:
        r = theta - c
        return float(0.5 * r @ h @ r + 3.0)

    eps = PMParams().epsilon
    assert eps == 0.5 and sorted(SIGNS) == [-1, 0, 1]
    theta_prev = torch.randn(d, generator=g, dtype=torch.float64)
    delta = torch.randn(d, generator=g, dtype=torch.float64)
    theta = theta_prev + delta
    # The LoRA form: the product scaled by (1 + sε) is the point θ̂_{t−1} + (1 + sε)Δ = θ + sεΔ.
    mean = sum(loss(theta_prev + (1 + s * eps) * delta) for s in SIGNS) / len(SIGNS)
    expected = loss(theta) + eps**2 / 3 * float(delta @ h @ delta)
    assert mean == pytest.approx(expected, rel=1e-13)


def test_magmax_online_equals_batch_with_ties_to_the_later_task():
    g = torch.Generator().manual_seed(2)
    tvs = [rand_tensors(g) for _ in range(6)]
    # Plant exact magnitude ties with opposite signs: the later task must win.
    tvs[4][NAMES[0]][0, 0] = 7.0
    tvs[1][NAMES[0]][0, 0] = -7.0
    tvs[2][NAMES[1]][1, 2] = -9.0
    tvs[5][NAMES[1]][1, 2] = 9.0
    running = None
    for t, tv in enumerate(tvs):
        running = M.magmax_update(running, tv)
        batch = M.magmax(tvs[: t + 1], lam=0.5)
        for n in NAMES:
            assert torch.equal(0.5 * running[n], batch[n])
    assert batch[NAMES[0]][0, 0] == 3.5 and batch[NAMES[1]][1, 2] == 4.5


def test_ties_hand_worked():
    """Trim top-60% (k = round(0.6·5) = 3 of 5 entries, over both matrices; count "round"), elect sign by mass,
    disjoint mean, λ = 0.5."""
    def tv(a: list[float], b: list[float]) -> M.Tensors:
        return {"a": torch.tensor(a, dtype=torch.float64), "b": torch.tensor(b, dtype=torch.float64)}

    tvs = [tv([3, -1], [0.5, 2, -4]), tv([-2, 1], [1.5, -3, 0.5]), tv([1, -2], [-0.5, 0.1, 5])]
    trimmed = [M.ties_trim(t, 0.6, "round") for t in tvs]
    assert trimmed[0]["a"].tolist() == [3, 0] and trimmed[0]["b"].tolist() == [0, 2, -4]
    assert trimmed[1]["a"].tolist() == [-2, 0] and trimmed[1]["b"].tolist() == [1.5, -3, 0]
    assert trimmed[2]["a"].tolist() == [1, -2] and trimmed[2]["b"].tolist() == [0, 0, 5]
    # masses [2, −2, 1.5, −1, 1] → signs [+, −, +, −, +]; agreeing means [(3+1)/2, −2, 1.5, −3, 5]
    merged = M.ties_merge(tvs, density=0.6, lam=0.5, count="round")
    assert merged["a"].tolist() == [1.0, -1.0] and merged["b"].tolist() == [0.75, -1.5, 2.5]
    acc = None
    for t in trimmed:
        acc = M.ties_accumulate(acc, t)
    online = M.ties_resolve(acc, lam=0.5)
    assert online["a"].tolist() == [1.0, -1.0] and online["b"].tolist() == [0.75, -1.5, 2.5]
    # Tied magnitudes at the threshold are all kept.
    assert M.ties_trim(tv([1, -1], [1, 0.5, 0]), 0.4, "round")["a"].tolist() == [1, -1]


def test_ties_online_equals_batch_on_random_vectors():
    g = torch.Generator().manual_seed(3)
    tvs = [rand_tensors(g) for _ in range(5)]
    acc = None
    for t, tv in enumerate(tvs):
        acc = M.ties_accumulate(acc, M.ties_trim(tv, 0.3))
        batch = M.ties_merge(tvs[: t + 1], 0.3, 0.55)
        online = M.ties_resolve(acc, 0.55)
        for n in NAMES:
            torch.testing.assert_close(online[n], batch[n], rtol=1e-15, atol=0.0)


def test_dare_hand_worked():
    tv = {"b": torch.tensor([[2.0, 4.0], [6.0, 8.0]]), "a": torch.tensor([1.0, -3.0, 5.0])}
    out = M.dare(tv, 0.5, torch.Generator().manual_seed(0))
    # The rule: masks from torch.rand on the CPU generator in sorted-name order ("a" first), keep r ≥ p, × 1/(1−p).
    g = torch.Generator().manual_seed(0)
    r_a, r_b = torch.rand(3, generator=g), torch.rand(2, 2, generator=g)
    assert torch.equal(out["a"], torch.where(r_a >= 0.5, 2 * tv["a"], torch.zeros(3)))
    assert torch.equal(out["b"], torch.where(r_b >= 0.5, 2 * tv["b"], torch.zeros(2, 2)))
    assert list(out) == ["b", "a"]  # names keep their order
    assert torch.equal(M.dare(tv, 0.0, torch.Generator().manual_seed(5))["b"], tv["b"])
    # Unbiased: the mean over many masks approaches τ (0.9 drop → 10× rescale).
    big = {"w": torch.full((200_000,), 3.0)}
    assert float(M.dare(big, 0.9, torch.Generator().manual_seed(1))["w"].mean()) == pytest.approx(3.0, rel=0.03)
    with pytest.raises(ValueError):
        M.dare(tv, 1.0, torch.Generator())


def test_average_task_arithmetic_coma_cofima_hand_worked():
    x = {"w": torch.tensor([1.0, 2.0])}
    y = {"w": torch.tensor([3.0, -2.0])}
    assert M.average([x, y])["w"].tolist() == [2.0, 0.0]
    assert M.task_arithmetic([x, y], 0.5)["w"].tolist() == [2.0, 0.0]
    assert M.coma(x, y, 0.25)["w"].tolist() == [1.5, 1.0]
    prev = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    new = {"w": torch.tensor([3.0, 3.0, 3.0, 3.0])}
    f_prev = {"w": torch.tensor([1.0, 0.0, 0.0, 3.0])}
    f_new = {"w": torch.tensor([1.0, 1.0, 0.0, 1.0])}
    # (0.5·F0·1 + 0.5·F1·3) / (0.5·F0 + 0.5·F1): [2, 3, CoMA fallback 2, (3+3)/4 = 1.5]
    assert M.cofima(prev, new, f_prev, f_new, 0.5)["w"].tolist() == [2.0, 3.0, 2.0, 1.5]
    # Clip at 1: F0 = 3 → 1, so the last entry becomes (1 + 3)/2 = 2.
    assert M.cofima(prev, new, f_prev, f_new, 0.5, fisher_max=1.0)["w"].tolist() == [2.0, 3.0, 2.0, 2.0]


def test_cofima_weights_the_new_model_by_w_not_one_minus_w():
    """w = 0.25 (weight of the new model): swapping w and 1 − w gives [2.5, 3, 2.5, 2.0] instead."""
    prev = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)}
    new = {"w": torch.tensor([3.0, 3.0, 3.0, 3.0], dtype=torch.float64)}
    f_prev = {"w": torch.tensor([1.0, 0.0, 0.0, 3.0], dtype=torch.float64)}
    f_new = {"w": torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)}
    # (0.75·F0·1 + 0.25·F1·3) / (0.75·F0 + 0.25·F1): [1.5, 3, CoMA 0.75 + 0.75 = 1.5, (2.25 + 0.75)/2.5 = 1.2]
    out = M.cofima(prev, new, f_prev, f_new, 0.25)["w"]
    torch.testing.assert_close(out, torch.tensor([1.5, 3.0, 1.5, 1.2], dtype=torch.float64), rtol=1e-15, atol=0)
    assert M.coma(prev, new, 0.25)["w"].tolist() == [1.5] * 4


def test_ties_entry_whose_masses_cancel_merges_to_zero():
    """Elected sign γ = sgn(Σ τ̂) = 0 (masses +3 and −3): the entry merges to 0, online and batch, although both
    sides have agreeing entries; the other entry is the ordinary disjoint mean."""
    tvs = [{"w": torch.tensor([3.0, 1.0], dtype=torch.float64)},
           {"w": torch.tensor([-1.0, 2.0], dtype=torch.float64)},
           {"w": torch.tensor([-2.0, -1.0], dtype=torch.float64)}]
    batch = M.ties_merge(tvs, density=1.0, lam=1.0)
    acc = None
    for tv in tvs:
        acc = M.ties_accumulate(acc, M.ties_trim(tv, 1.0))
    online = M.ties_resolve(acc, lam=1.0)
    for out in (batch, online):
        assert out["w"].tolist() == [0.0, 1.5]
