"""Merge rules as pure functions on dense task vectors (dicts: adapted-matrix name → tensor).

Nothing here touches a model: methods/ compute task vectors (ΔW = B·A·scaling per adapted k/v matrix, never the
LoRA factors separately) and Fisher diagonals, call these functions and write the result into the weights. Each
function states its formula and its source; [I] marks a choice of ours (inference), not the authors'.

Notation: W0 pretrained weights; θ̂_t merged (inference) model after task t; θ*_t the end point of task t's training;
Δ_t = θ*_t − θ̂_{t−1} (P&M's task vector); τ_t = θ*_t − W0 (the task vector of the merging literature);
F_t the diagonal empirical Fisher at θ*_t.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

Tensors = dict[str, torch.Tensor]
Alpha = float | dict[str, float]


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


# ---- P&M: closed-form merge coefficient ---------------------------------------------------------------------------


def clipped_ratio(num: float, den: float) -> float:
    """num/den clipped to [0, 1]; 1 when den ≤ 0 or the ratio is not finite (P&M spec §2.3 guard, [I])."""
    if not den > 0:
        return 1.0
    r = num / den
    if not math.isfinite(r):
        return 1.0
    return min(max(r, 0.0), 1.0)


def pm_alpha_from_terms(num: dict[str, float], den: dict[str, float], per_module: bool = False) -> Alpha:
    """One global α = clip(Σ_m num_m / Σ_m den_m) (the paper's default), or one α per adapted matrix m."""
    if per_module:
        return {m: clipped_ratio(num[m], den[m]) for m in num}
    return clipped_ratio(sum(num.values()), sum(den.values()))


def pm_terms_batch(
    theta_stars: Sequence[Tensors], fishers: Sequence[Tensors], theta_prev: Tensors, delta: Tensors
) -> tuple[dict[str, float], dict[str, float]]:
    """Numerator and denominator of P&M's α_t per adapted matrix, from all tasks i = 1..t (batch form).

        α_t = − Σ_{i≤t} (θ̂_{t−1} − θ*_i)ᵀ F_i Δ_t  /  Σ_{i≤t} Δ_tᵀ F_i Δ_t

    Qiu et al., "Train with Perturbation, Infer after Merging", NeurIPS 2025, arXiv 2505.22389, §"Infer after
    merging" (minimiser of the 2nd-order Taylor expansion of Σ_i [L_i(θ̂_t) − L_i(θ*_i)] on the segment
    θ̂_t = θ̂_{t−1} + αΔ_t, Hessians replaced by the diagonal empirical Fisher; research/pm-spec.md §2.1).
    `theta_stars`/`fishers` list tasks 1..t (the last is task t, θ*_t = θ̂_{t−1} + Δ_t); all θ share one reference
    (absolute, or relative to W0: the difference cancels). Sums in float64.
    """
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for m, d in delta.items():
        d = _f64(d)
        prev = _f64(theta_prev[m])
        num[m] = -sum(float(((prev - _f64(ts[m])) * _f64(f[m]) * d).sum()) for ts, f in zip(theta_stars, fishers))
        den[m] = sum(float((_f64(f[m]) * d * d).sum()) for f in fishers)
    return num, den


def pm_alpha_batch(
    theta_stars: Sequence[Tensors],
    fishers: Sequence[Tensors],
    theta_prev: Tensors,
    delta: Tensors,
    per_module: bool = False,
) -> Alpha:
    """P&M's α_t from the batch formula (see `pm_terms_batch`), clipped to [0, 1]; α_1 = 1."""
    if len(theta_stars) == 1:
        return {m: 1.0 for m in delta} if per_module else 1.0
    return pm_alpha_from_terms(*pm_terms_batch(theta_stars, fishers, theta_prev, delta), per_module=per_module)


def pm_terms_stream(
    s0: Tensors | None, s1: Tensors | None, dhat: Tensors | None, fisher: Tensors, delta: Tensors
) -> tuple[dict[str, float], dict[str, float]]:
    """The same numerator and denominator from running sums (memory does not grow with t).

    With S0 = Σ_{i<t} F_i, S1 = Σ_{i<t} F_i ⊙ D*_i and D̂ = θ̂_{t−1} − W0, D*_i = θ*_i − W0 (relative to W0 for
    precision), per adapted matrix:
        num = ⟨F_t, Δ⊙Δ⟩ − ⟨D̂⊙S0 − S1, Δ⟩,   den = ⟨S0 + F_t, Δ⊙Δ⟩
    (the i = t term of the batch numerator is +ΔᵀF_tΔ since θ̂_{t−1} − θ*_t = −Δ). Derived in research/pm-spec.md
    §2.3 [I]; algebraically identical to the batch form. Sums in float64. `s0 is None` means t = 1.
    """
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for m, d in delta.items():
        d, f = _f64(d), _f64(fisher[m])
        q = float((f * d * d).sum())
        if s0 is None:
            num[m], den[m] = q, q
        else:
            assert s1 is not None and dhat is not None
            num[m] = q - float(((dhat[m] * s0[m] - s1[m]) * d).sum())
            den[m] = float(((s0[m] + f) * d * d).sum())
    return num, den


def pm_alpha_stream(
    s0: Tensors | None,
    s1: Tensors | None,
    dhat: Tensors | None,
    fisher: Tensors,
    delta: Tensors,
    per_module: bool = False,
) -> Alpha:
    """P&M's α_t from running sums (see `pm_terms_stream`), clipped to [0, 1]; α_1 = 1."""
    if s0 is None:
        return {m: 1.0 for m in delta} if per_module else 1.0
    return pm_alpha_from_terms(*pm_terms_stream(s0, s1, dhat, fisher, delta), per_module=per_module)


def pm_stream_update(
    s0: Tensors | None, s1: Tensors | None, dhat: Tensors | None, fisher: Tensors, delta: Tensors, alpha: Alpha
) -> tuple[Tensors, Tensors, Tensors]:
    """After merging task t: D*_t = D̂ + Δ;  D̂ ← D̂ + α_t Δ;  S0 ← S0 + F_t;  S1 ← S1 + F_t ⊙ D*_t (float64).

    Returns new (S0, S1, D̂); the inputs are not modified. research/pm-spec.md §2.3.
    """
    out0, out1, outd = {}, {}, {}
    for m, d in delta.items():
        d, f = _f64(d), _f64(fisher[m])
        prev = dhat[m] if dhat is not None else torch.zeros_like(d)
        a = alpha[m] if isinstance(alpha, dict) else alpha
        dstar = prev + d
        outd[m] = prev + a * d
        out0[m] = f.clone() if s0 is None else s0[m] + f
        out1[m] = f * dstar if s1 is None else s1[m] + f * dstar
    return out0, out1, outd


# ---- task-vector merges (τ_i = θ*_i − W0) -------------------------------------------------------------------------


def _names(tvs: Sequence[Tensors]) -> list[str]:
    return list(tvs[0])


def average(tvs: Sequence[Tensors]) -> Tensors:
    """Model averaging: (1/t) Σ_i τ_i (so θ̂_t = W0 + mean τ). With τ_t trained from θ̂_{t−1} this is P&M's "Model
    Averaging" row, θ̂_t = ((t−1)θ̂_{t−1} + θ*_t)/t (research/merging-methods.md §8.3; MagMax code uses 1/n)."""
    return {n: sum(tv[n] for tv in tvs) / len(tvs) for n in _names(tvs)}


def task_arithmetic(tvs: Sequence[Tensors], lam: float) -> Tensors:
    """Task arithmetic: λ Σ_i τ_i. Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, arXiv 2212.04089
    (λ picked on held-out data, typically 0.3–0.5 for full fine-tuning; research/merging-methods.md §8.3)."""
    return {n: lam * sum(tv[n] for tv in tvs) for n in _names(tvs)}


def dare(tv: Tensors, p: float, generator: torch.Generator) -> Tensors:
    """DARE: drop each entry with probability p, rescale the kept ones by 1/(1−p) (unbiased in expectation).

    Yu et al., "Language Models are Super Mario", ICML 2024, arXiv 2311.03099. The mask is drawn on the CPU from
    `generator` in sorted-name order, so it is the same on every device.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"DARE drop rate must be in [0, 1), got {p}")
    out = {}
    for n in sorted(tv):
        keep = torch.rand(tv[n].shape, generator=generator) >= p
        out[n] = tv[n] * keep.to(tv[n].device, tv[n].dtype) / (1.0 - p)
    return {n: out[n] for n in tv}


def ties_trim(tv: Tensors, density: float) -> Tensors:
    """TIES step 1: keep the top `density` fraction of entries of τ by magnitude, over the whole task vector (all
    matrices together), zero the rest. k = max(1, round(density·n)); entries tied with the k-th largest magnitude are
    all kept. Yadav et al., "TIES-Merging", NeurIPS 2023, arXiv 2306.01708."""
    flat = torch.cat([t.reshape(-1) for t in tv.values()]).abs()
    k = max(1, round(density * flat.numel()))
    thr = torch.kthvalue(flat.cpu(), flat.numel() - k + 1).values.to(flat.device)
    return {n: torch.where(t.abs() >= thr, t, torch.zeros_like(t)) for n, t in tv.items()}


def ties_merge(tvs: Sequence[Tensors], density: float, lam: float) -> Tensors:
    """TIES-Merging (batch): trim each τ_i (top-k% by magnitude), elect the sign per entry by total mass
    γ = sgn(Σ_i τ̂_i), disjoint mean over the entries whose sign agrees with γ (zeros excluded), scale by λ.
    Entries with γ = 0 merge to 0 [I]. Yadav et al., NeurIPS 2023, arXiv 2306.01708; defaults top-20%, λ = 0.55 in the
    MagMax code (research/merging-methods.md §3)."""
    trimmed = [ties_trim(tv, density) for tv in tvs]
    out = {}
    for n in _names(tvs):
        stack = torch.stack([tv[n] for tv in trimmed])
        elected = torch.sign(stack.sum(0))
        agree = (torch.sign(stack) == elected) & (stack != 0)
        out[n] = lam * (stack * agree).sum(0) / agree.sum(0).clamp(min=1)
    return out


def ties_accumulate(acc: dict[str, Tensors] | None, trimmed: Tensors) -> dict[str, Tensors]:
    """Online TIES: positive and negative mass and counts per entry, Σ max(τ̂,0), Σ min(τ̂,0), #(τ̂>0), #(τ̂<0).

    Sign election and the disjoint mean need only these four sums, so `ties_resolve` of the accumulated trimmed
    vectors equals `ties_merge` of all of them, with memory independent of t [I: derived]."""
    add = {
        "pos": {n: t.clamp(min=0) for n, t in trimmed.items()},
        "neg": {n: t.clamp(max=0) for n, t in trimmed.items()},
        "npos": {n: (t > 0).to(t.dtype) for n, t in trimmed.items()},
        "nneg": {n: (t < 0).to(t.dtype) for n, t in trimmed.items()},
    }
    if acc is None:
        return add
    return {k: {n: acc[k][n] + v for n, v in add[k].items()} for k in add}


def ties_resolve(acc: dict[str, Tensors], lam: float) -> Tensors:
    """λ × (disjoint mean of the elected sign) from `ties_accumulate` sums; γ = sgn(pos + neg), γ = 0 → 0."""
    out = {}
    for n in acc["pos"]:
        elected = torch.sign(acc["pos"][n] + acc["neg"][n])
        mean_pos = acc["pos"][n] / acc["npos"][n].clamp(min=1)
        mean_neg = acc["neg"][n] / acc["nneg"][n].clamp(min=1)
        zero = torch.zeros_like(mean_pos)
        out[n] = lam * torch.where(elected > 0, mean_pos, torch.where(elected < 0, mean_neg, zero))
    return out


def magmax(tvs: Sequence[Tensors], lam: float) -> Tensors:
    """MagMax (batch): per entry, the τ_i of largest magnitude (ties → the later task), times λ.

    Marczak et al., "MagMax: Leveraging Model Merging for Seamless Continual Learning", ECCV 2024, arXiv 2407.06322;
    λ = 0.5 in the official code for full fine-tuning of CLIP (research/merging-methods.md §3)."""
    out = {}
    for n in _names(tvs):
        stack = torch.stack([tv[n] for tv in tvs])
        # argmax returns the first maximum; search the reversed stack so that the later task wins ties.
        last = len(tvs) - 1 - stack.abs().flip(0).argmax(0)
        out[n] = lam * stack.gather(0, last.unsqueeze(0)).squeeze(0)
    return out


def magmax_update(running: Tensors | None, tv: Tensors) -> Tensors:
    """MagMax online form: τ_MM ← where(|τ_t| ≥ |τ_MM|, τ_t, τ_MM). Max-|·| selection is associative, so after
    tasks 1..t, λ·τ_MM equals `magmax` over τ_1..τ_t (research/merging-methods.md §3)."""
    if running is None:
        return dict(tv)
    return {n: torch.where(tv[n].abs() >= running[n].abs(), tv[n], running[n]) for n in tv}


# ---- weight-space running averages ---------------------------------------------------------------------------------


def coma(prev: Tensors, new: Tensors, w: float) -> Tensors:
    """CoMA: θ̂_t = (1 − w) θ̂_{t−1} + w θ*_t (w = weight of the new model). Marouf et al., "Weighted Ensemble Models
    Are Strong Continual Learners", ECCV 2024, arXiv 2312.08977; w = 0.5 (`wt_alpha`) in the official code's runs
    (IemProg/CoFiMA train_all.sh and reproduction logs)."""
    return {n: (1.0 - w) * prev[n] + w * new[n] for n in prev}


def cofima(
    prev: Tensors, new: Tensors, f_prev: Tensors, f_new: Tensors, w: float, fisher_max: float | None = None
) -> Tensors:
    """CoFiMA: per-entry Fisher-weighted CoMA,
        θ̂_t = ((1−w) F_{t−1} ⊙ θ̂_{t−1} + w F_t ⊙ θ*_t) / ((1−w) F_{t−1} + w F_t),
    F_{t−1} the Fisher at the previous task's end point, both clipped at `fisher_max` (1e-4 in the official code).
    Entries where the denominator is 0 fall back to CoMA [I]. Marouf et al., ECCV 2024, arXiv 2312.08977."""
    out = {}
    for n in prev:
        fp, fn = f_prev[n].to(prev[n].dtype), f_new[n].to(prev[n].dtype)
        if fisher_max is not None:
            fp, fn = fp.clamp(max=fisher_max), fn.clamp(max=fisher_max)
        num = (1.0 - w) * fp * prev[n] + w * fn * new[n]
        den = (1.0 - w) * fp + w * fn
        plain = (1.0 - w) * prev[n] + w * new[n]
        out[n] = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), plain)
    return out
