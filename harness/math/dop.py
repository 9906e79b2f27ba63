"""DoP — "Continual Model Merging without Data: Dual Projections for Balancing Stability and Plasticity" (NeurIPS
2025), as FusionBench implements it (tanganke/fusion_bench `fusion_bench/method/dop/dop.py`, `ContinualDOPForCLIP`;
read, not copied). Per adapted matrix, the merge of the previous merged matrix W_m and the new task's W_n is found by
gradient descent on two losses, each measuring the change W − W_i in the principal subspaces of τ_i = W_i − W0:

    L_i(W) = ‖S_i U_iᵀ (W − W_i)‖²_F + ‖(W − W_i) V_i S_i‖²_F        (svd_proj_space "uv"; "u"/"v": one term)

with U_i, S_i, V_i the leading singular triplets of τ_i (`principal_subspace`). W starts at (W_m + W_n)/2 and takes
`steps` Adam steps (lr 1e-4) on Σ_i c_i L_i, c = (c_m, c_n) from MGDA (the min-norm convex combination of the two
gradients, each divided by its loss) smoothed by an EMA from (α, 1 − α), or fixed (α, 1 − α) without MGDA.
Defaults of the code's config (`config/method/dop/dop.yaml`): lr 1e-4, 200 steps, mgda true, ema true, β = 0.999,
α = 0.8, ε = 0.99999, space "uv". Everything runs in the dtype of the inputs (float32 in the code).
"""

from __future__ import annotations

from typing import Literal

import torch

Space = Literal["uv", "u", "v"]


def principal_subspace(tv: torch.Tensor, epsilon: float, rule: Literal["code", "inclusive"] = "code"):
    """(U_r, s_r, V_r) of τ = U S Vᵀ with r = searchsorted(cumsum(s)/Σs, ε) — the code's rule, which keeps the
    directions *before* the one whose cumulative share first reaches ε (a rank-1 τ gives r = 0, no direction).
    "inclusive" keeps that direction too (r + 1, at most rank) [I]."""
    u, s, vh = torch.linalg.svd(tv, full_matrices=True)
    if not float(s.sum()) > 0:  # τ = 0: no direction to protect
        return u[:, :0], s[:0], vh.T[:, :0]
    ratio = s.cumsum(0) / s.sum()
    r = int(torch.searchsorted(ratio, torch.tensor(float(min(epsilon, 1.0)), dtype=ratio.dtype, device=ratio.device)))
    if rule == "inclusive":
        r = min(r + 1, s.numel())
    return u[:, :r], s[:r], vh.T[:, :r]


def dop_loss(diff: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, space: Space = "uv") -> torch.Tensor:
    """L = ‖diag(s) Uᵀ D‖²_F + ‖D V diag(s)‖²_F for D = W − W_i (the code's `cal_loss_i`); "u" or "v": one term."""
    lu = (s[:, None] * (u.T @ diff)).square().sum()
    lv = ((diff @ v) * s[None, :]).square().sum()
    return lu + lv if space == "uv" else lu if space == "u" else lv


def min_norm_2(v11: float, v12: float, v22: float) -> float:
    """γ minimising ‖γ g1 + (1 − γ) g2‖² over [0, 1] from the inner products, as the MGDA solver (Sener & Koltun,
    NeurIPS 2018, `MinNormSolver._min_norm_element_from2`) the code uses: 0.999 if ⟨g1,g2⟩ ≥ ⟨g1,g1⟩, 0.001 if
    ⟨g1,g2⟩ ≥ ⟨g2,g2⟩, else (⟨g2,g2⟩ − ⟨g1,g2⟩) / (⟨g1,g1⟩ + ⟨g2,g2⟩ − 2⟨g1,g2⟩)."""
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return (v22 - v12) / (v11 + v22 - 2.0 * v12)


def dop_merge_matrix(
    w0: torch.Tensor,
    w_merged: torch.Tensor,
    w_new: torch.Tensor,
    *,
    lr: float = 1e-4,
    steps: int = 200,
    mgda: bool = True,
    ema: bool = True,
    ema_beta: float = 0.999,
    alpha: float = 0.8,
    epsilon: float = 0.99999,
    space: Space = "uv",
    rank_rule: Literal["code", "inclusive"] = "code",
) -> tuple[torch.Tensor, tuple[float, float]]:
    """DoP's merged matrix (module docstring) and the final loss weights (c_m, c_n). Per step with MGDA: losses L_i and
    gradients g_i at W; g_i ← g_i / L_i (the code's `gradient_normalizers(..., "loss")`; a zero loss leaves g_i as is
    [I]); γ = `min_norm_2`; c = (γ, 1 − γ), with EMA c ← β c_prev + (1 − β) c from c_0 = (α, 1 − α); one Adam step on
    c_m L_m + c_n L_n. Deterministic (no randomness)."""
    bases = [principal_subspace(w - w0, epsilon, rank_rule) for w in (w_merged, w_new)]
    targets = [w_merged.detach(), w_new.detach()]
    w = torch.nn.Parameter(((w_merged + w_new) / 2).detach().clone())
    opt = torch.optim.Adam([w], lr=lr)
    c = (alpha, 1.0 - alpha)
    ema_c = c
    with torch.enable_grad():
        for _ in range(steps):
            if mgda:
                grads, losses = [], []
                for (u, s, v), target in zip(bases, targets):
                    loss = dop_loss(w - target, u, s, v, space)
                    (g,) = torch.autograd.grad(loss, w)
                    lv = float(loss.detach())
                    grads.append(g / lv if lv > 0 else g)
                    losses.append(lv)
                v11 = float((grads[0] * grads[0]).sum())
                v12 = float((grads[0] * grads[1]).sum())
                v22 = float((grads[1] * grads[1]).sum())
                gamma = min_norm_2(v11, v12, v22)
                c = (gamma, 1.0 - gamma)
                if ema:
                    ema_c = (ema_beta * ema_c[0] + (1 - ema_beta) * c[0], ema_beta * ema_c[1] + (1 - ema_beta) * c[1])
                    c = ema_c
            total = sum(ci * dop_loss(w - target, u, s, v, space) for ci, (u, s, v), target in zip(c, bases, targets))
            opt.zero_grad()
            total.backward()
            opt.step()
    return w.detach(), (float(c[0]), float(c[1]))
