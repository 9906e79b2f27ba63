"""BECAME's merge coefficient (Li, Lu, Dai, Huang, Ding, Lu, "BECAME: BayEsian Continual learning with Adaptive
Model mErging", ICML 2025, arXiv 2504.02666, §4). The authors publish no code; the closed form below is derived from
the paper's Laplace/MAP set-up (research/merging-methods.md §5) and is a reconstruction.

With diagonal Fishers, the log-posterior of θ on the segment θ(λ) = θ^GP + λΔ, Δ = θ̂_t − θ^GP_t, is approximated by

    q(λ) = λ²·ΔᵀF_{1:t−1}Δ + (1 − λ)²·ΔᵀF_tΔ        (up to ½ and constants)

(prior N(θ*_{t−1}, F_{1:t−1}⁻¹) — the gradient-projection step θ^GP − θ*_{t−1} is taken to lie in the old tasks'
null space, so it adds nothing — and new-task term N(θ̂_t, F_t⁻¹)). q is convex with q'(0) < 0 < q'(1), so

    λ* = argmin q = ΔᵀF_tΔ / (ΔᵀF_{1:t−1}Δ + ΔᵀF_tΔ) ∈ [0, 1],   and afterwards F_{1:t} = F_{1:t−1} + F_t.
"""

from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]


def quad(fisher: Tensors, delta: Tensors) -> float:
    """ΔᵀFΔ = Σ_m ⟨F_m, Δ_m ⊙ Δ_m⟩ for diagonal F (float64)."""
    return float(sum((fisher[n].double() * delta[n].double().square()).sum() for n in delta))


def objective(lam: float, old: float, new: float) -> float:
    """q(λ) = λ²·ΔᵀF_oldΔ + (1 − λ)²·ΔᵀF_newΔ, with `old` = ΔᵀF_oldΔ and `new` = ΔᵀF_newΔ."""
    return lam * lam * old + (1.0 - lam) ** 2 * new


def became_lambda(delta: Tensors, fisher_old: Tensors | None, fisher_new: Tensors) -> float:
    """λ* = ΔᵀF_newΔ / (ΔᵀF_oldΔ + ΔᵀF_newΔ); 1 without an old Fisher (first task) or when both terms vanish
    (Δ = 0: the merge is θ^GP whatever λ)."""
    if fisher_old is None:
        return 1.0
    new, old = quad(fisher_new, delta), quad(fisher_old, delta)
    return new / (old + new) if old + new > 0 else 1.0
