"""BECAME's merge coefficient (Li, Lu, Dai, Huang, Ding, Lu, "BECAME: BayEsian Continual learning with Adaptive
Model mErging", ICML 2025, arXiv 2504.02666, §4).

Default — the authors' code (ankur-bohra/BECAME, a fork whose README calls it the official code,
`NSCL-based/svd_agent/agent.py::merge_n_analysis`; the same formula in b027ffv/Original-BECAME-singlehead `fisher.py`;
read, not copied): on the segment θ(λ) = θ^GP_t + λΔ, Δ = θ̂_t − θ^GP_t,

    λ = ΔᵀF_tΔ / (ΔᵀF_{1:t−1}Δ + ΔᵀF_tΔ)        (no cross term; ∈ [0, 1] by construction),

F_t the diagonal Fisher at θ̂_t and F_{1:t−1} the accumulated Fisher of the old tasks.

Option "derived" (ours, research/merging-methods.md §5, labelled as such): the minimiser of the Laplace objective
with the prior N(θ*_{t−1}, F_{1:t−1}⁻¹) and the new-task term N(θ̂_t, F_t⁻¹),

    Q(θ) = (θ − θ*_{t−1})ᵀ F_{1:t−1} (θ − θ*_{t−1}) + (θ − θ̂_t)ᵀ F_t (θ − θ̂_t),
    q(λ) = (g + λΔ)ᵀ F_{1:t−1} (g + λΔ) + (1 − λ)²·ΔᵀF_tΔ,   g = θ^GP_t − θ*_{t−1},
    λ* = (ΔᵀF_tΔ − gᵀF_{1:t−1}Δ) / (ΔᵀF_{1:t−1}Δ + ΔᵀF_tΔ),

clipped to [0, 1] (q is convex). The authors' formula is this λ* with the cross term gᵀF_{1:t−1}Δ dropped (the
authors' code computes λ without it; research/merging-methods.md §5).
"""

from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]


def quad(fisher: Tensors, delta: Tensors) -> float:
    """ΔᵀFΔ = Σ_m ⟨F_m, Δ_m ⊙ Δ_m⟩ for diagonal F (float64)."""
    return float(sum((fisher[n].double() * delta[n].double().square()).sum() for n in delta))


def bilinear(fisher: Tensors, a: Tensors, b: Tensors) -> float:
    """aᵀFb = Σ_m ⟨F_m, a_m ⊙ b_m⟩ for diagonal F (float64)."""
    return float(sum((fisher[n].double() * a[n].double() * b[n].double()).sum() for n in b))


def objective(lam: float, old: float, new: float, cross: float = 0.0, gg: float = 0.0) -> float:
    """q(λ) = gᵀF_old g + 2λ·gᵀF_oldΔ + λ²·ΔᵀF_oldΔ + (1 − λ)²·ΔᵀF_newΔ, with `old` = ΔᵀF_oldΔ, `new` = ΔᵀF_newΔ,
    `cross` = gᵀF_oldΔ and `gg` = gᵀF_old g."""
    return gg + 2.0 * lam * cross + lam * lam * old + (1.0 - lam) ** 2 * new


def became_lambda(
    delta: Tensors, fisher_old: Tensors | None, fisher_new: Tensors, gp_step: Tensors | None = None
) -> float:
    """λ = clip((ΔᵀF_newΔ − gᵀF_oldΔ) / (ΔᵀF_oldΔ + ΔᵀF_newΔ), 0, 1), g = `gp_step` = θ^GP − θ*_{t−1}; with
    `gp_step` None (the authors' code) the cross term is absent: λ = ΔᵀF_newΔ / (ΔᵀF_oldΔ + ΔᵀF_newΔ). 1 without an
    old Fisher (first task) or when both quadratic terms vanish (Δ = 0: the merge is θ^GP whatever λ)."""
    if fisher_old is None:
        return 1.0
    new, old = quad(fisher_new, delta), quad(fisher_old, delta)
    if not old + new > 0:
        return 1.0
    cross = bilinear(fisher_old, gp_step, delta) if gp_step is not None else 0.0
    return min(max((new - cross) / (old + new), 0.0), 1.0)
