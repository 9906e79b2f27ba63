"""Continual merges of FusionBench and of Fisher merging, as pure functions on dense task vectors.

Task vectors τ_t = θ*_t − W0 per adapted matrix (dicts name → tensor, harness/math/merging.py). Each function states
its formula and source; [I] marks a choice of ours. "Code" means the public implementation that was read (never
copied): tanganke/fusion_bench (`fusion_bench/method/opcm/`, `fusion_bench/method/ties_merging/`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from harness.math.merging import TrimCount, ties_accumulate, ties_resolve, ties_trim

Tensors = dict[str, torch.Tensor]


# ---- OPCM: orthogonal projection onto the merged vector's complement, norm-preserving rescale -----------------------


def opcm_split_rank(singular_values: torch.Tensor, alpha: float) -> int:
    """r = the first index i with Σ_{j≤i} s_j / Σ_j s_j > α (0 if there is none, e.g. all s = 0) — FusionBench's
    `OPCMForCLIP.merge_linear_weights`: `(s.cumsum(0) / s.sum() > alpha).float().argmax()`. Note the 0-based index:
    the leading r directions (not r + 1) are protected."""
    s = singular_values.to(torch.float64)
    total = float(s.sum())
    if not total > 0:
        return 0
    above = (s.cumsum(0) / total > alpha).nonzero()
    return int(above[0]) if len(above) else 0


def opcm_project(
    merged_tv: torch.Tensor, tv: torch.Tensor, alpha: float, diagonal: Literal["range", "all"] = "range"
) -> torch.Tensor:
    """The new task vector with the merged vector's leading singular directions removed (one matrix):

        τ̄ = U S Vᵀ (full SVD),  P = Uᵀ τ V,  P_ii = 0 for every i,  P[:r, :r] = 0,  return U P Vᵀ,

    r = `opcm_split_rank(S, α)`. Tang et al. (Anke Tang, Enneng Yang, Li Shen, Yong Luo, Han Hu, Bo Du, Dacheng Tao),
    "Merging Models on the Fly Without Retraining: A Sequential Approach to
    Scalable Continual Model Merging" (OPCM), arXiv 2501.09522: the new task vector projected orthogonally to the
    merged one's principal subspace; the exact rule — zero the diagonal (every u_iᵀτv_i) and the leading r×r block —
    is the code's (`merge_linear_weights`). `diagonal` "all" zeroes every P_ii as the code does; "range" (default [I])
    only those of the numerically nonzero singular values (s_i > max(m, n)·ε·s_0 with ε of τ̄'s dtype, NumPy's
    matrix_rank rule): for
    a rank-deficient τ̄ — every LoRA merge — the other singular vectors are an arbitrary basis of the null spaces, so
    zeroing their P_ii removes arbitrary components and makes the result jump with 1-ulp changes of τ̄ (measured: the
    stand-in-device test's λ_2 moved by 5·10⁻⁴). Computed in float64, returned in τ's dtype."""
    u, _s, vh = torch.linalg.svd(merged_tv.to(torch.float64), full_matrices=True)
    r = opcm_split_rank(_s, alpha)
    p = u.T @ tv.to(torch.float64) @ vh.T
    if diagonal == "all":
        p.diagonal().zero_()
    else:
        # the input's precision: a float32 τ̄ of rank r has its other singular values at ~1e-7·s_0, not 0
        tol = max(merged_tv.shape) * torch.finfo(merged_tv.dtype).eps * (_s[0] if _s.numel() else 0.0)
        keep = (_s > tol).to(p.dtype)
        d = p.diagonal()
        d[: keep.numel()] = d[: keep.numel()] * (1.0 - keep)
    p[:r, :r] = 0
    return (u @ p @ vh).to(tv.dtype)


def tv_norm(tv: Tensors) -> float:
    """‖τ‖ over all matrices together (FusionBench's `get_task_vector_norm`: the norm of the flattened state dict)."""
    return math.sqrt(sum(float(t.to(torch.float64).square().sum()) for t in tv.values()))


def opcm_step(
    merged: Tensors | None, lam_prev: float, norm_sum: float, t: int, tv: Tensors, alpha: float,
    diagonal: Literal["range", "all"] = "range",
) -> tuple[Tensors, float, float, dict]:
    """One OPCM merge: (τ̄_t, λ_t, Σ_{i≤t} ‖τ_i‖, facts) from τ̄_{t−1} (`merged`, None at t = 1), λ_{t−1}, Σ_{i<t} ‖τ_i‖,
    the 1-based task index t and τ_t:

        S_t = λ_{t−1}·τ̄_{t−1} + Π_t(τ_t)   (per matrix, Π_t = `opcm_project` against τ̄_{t−1}),
        λ_t = ‖S_t‖ / n̄_t,   n̄_t = (1/t) Σ_{i≤t} ‖τ_i‖,   τ̄_t = S_t / λ_t,

    so the merged vector keeps the average task-vector norm; τ̄_1 = τ_1, λ_1 = 1. θ̂_t = W0 + τ̄_t. Tang et al.,
    arXiv 2501.09522; the recursion and the rescale are the code's `OPCMForCLIP.run` (λ_t = ‖S_t‖/n̄_t, the merged
    vector multiplied by n̄_t/‖S_t‖). A zero S_t is left as is [I]."""
    norm_sum += tv_norm(tv)
    if merged is None:
        return dict(tv), 1.0, norm_sum, {"lambda": 1.0}
    s = {n: lam_prev * merged[n] + opcm_project(merged[n], tv[n], alpha, diagonal) for n in tv}
    mean_norm = norm_sum / t
    s_norm = tv_norm(s)
    lam = s_norm / mean_norm if s_norm > 0 and mean_norm > 0 else lam_prev
    out = {n: x / lam for n, x in s.items()} if s_norm > 0 and mean_norm > 0 else s
    return out, lam, norm_sum, {"lambda": lam, "mean_tv_norm": mean_norm}


# ---- FusionBench's continual (pairwise) TIES ----------------------------------------------------------------------


def ties_pairwise_increment(
    merged_tv: Tensors, tv: Tensors, density: float, count: TrimCount = "ties-code", merge: Literal["sum", "mean"] = "sum"
) -> Tensors:
    """TIES of the two vectors [τ̄_{t−1}, τ_t] (both trimmed to their top entries, sign by mass with zero signs
    resolved by majority, disjoint `merge`), unscaled. FusionBench's `ContinualTiesMergingForCLIP.run` with its
    `ties_merging` (merge_func "sum" by default)."""
    acc = ties_accumulate(ties_accumulate(None, ties_trim(merged_tv, density, count)), ties_trim(tv, density, count))
    return ties_resolve(acc, 1.0, merge=merge, zero_sign="majority")


def ties_pairwise_step(
    merged_tv: Tensors | None, tv: Tensors, density: float, lam: float, count: TrimCount = "ties-code",
    merge: Literal["sum", "mean"] = "sum",
) -> Tensors:
    """FusionBench's continual TIES (pairwise, recursive), relative to W0:

        τ̄_1 = λ·τ_1,   τ̄_t = τ̄_{t−1} + λ·TIES(τ̄_{t−1}, τ_t)   (t ≥ 2),

    TIES = `ties_pairwise_increment` (both vectors trimmed to top `density`, majority-resolved sign, disjoint sum).
    The merged vector is re-trimmed at every step and the increment is *added* to it: a different algorithm from the
    exact online TIES of all τ_i (`ties_accumulate`/`ties_resolve`, methods/ties.py). Defaults of the code's config
    (`config/method/opcm/ties_merging.yaml`): λ = 0.5, threshold 20 (top-20 %), merge_func sum."""
    if merged_tv is None:
        return {n: lam * t for n, t in tv.items()}
    inc = ties_pairwise_increment(merged_tv, tv, density, count, merge)
    return {n: merged_tv[n] + lam * inc[n] for n in tv}


# ---- continual Fisher merging -----------------------------------------------------------------------------------


def fisher_merge_step(
    merged_tv: Tensors | None, fisher_sum: Tensors | None, tv: Tensors, fisher: Tensors, floor: float = 1e-6
) -> tuple[Tensors, Tensors]:
    """Continual Fisher-weighted averaging with the old tasks' Fisher accumulated (relative to W0):

        τ̄_t = (S_{t−1} ⊙ τ̄_{t−1} + F̃_t ⊙ τ_t) / (S_{t−1} + F̃_t),   S_t = S_{t−1} + F̃_t,   F̃_t = F_t + floor,

    τ̄_1 = τ_1, S_1 = F̃_1. By induction τ̄_t = Σ_{i≤t} F̃_i τ_i / Σ_{i≤t} F̃_i: exactly Matena & Raffel's Fisher merging
    ("Merging Models with Fisher-Weighted Averaging", NeurIPS 2022, arXiv 2111.09832; θ* = Σ_i F_i θ_i / Σ_i F_i)
    of all task models, with memory constant in t. `floor` is FusionBench's `minimal_fisher_weight` (1e-6; Matena &
    Raffel's code has a fisher floor too): an entry no task has Fisher on falls back to the plain mean. Returns
    (τ̄_t, S_t) in float64 for S (the sums of many small Fishers)."""
    f = {n: fisher[n].to(torch.float64) + floor for n in tv}
    if merged_tv is None or fisher_sum is None:
        return dict(tv), f
    out = {}
    for n, x in tv.items():
        s = fisher_sum[n]
        num = s * merged_tv[n].to(torch.float64) + f[n] * x.to(torch.float64)
        out[n] = (num / (s + f[n])).to(x.dtype)
    return out, {n: fisher_sum[n] + f[n] for n in tv}
