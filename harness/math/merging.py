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
from typing import Literal, Sequence

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


TrimCount = Literal["ties-code", "round"]
TRIM_COUNTS = ("ties-code", "round")


def ties_keep_count(n: int, density: float, count: TrimCount = "ties-code") -> int:
    """Number of entries TIES keeps of an n-entry task vector.

    "ties-code" (default): k = min(n, int(density·n) + 1) — the TIES code's `topk_values_mask` (threshold at the
    (n − int(density·n))-th smallest |τ|, entries ≥ it kept), used unchanged by the MagMax code and FusionBench
    (`ties_merging_utils.py`), so published TIES/MagMax numbers are comparable; int() truncates the float product
    (0.2·250 → 50 → 51 kept). "round": k = max(1, round(density·n)), the paper's "top-k%" read literally [I]."""
    if count == "ties-code":
        return min(n, int(density * n) + 1)
    if count == "round":
        return max(1, round(density * n))
    raise ValueError(f"ties_keep_count: count must be one of {', '.join(TRIM_COUNTS)}, got {count!r}")


def ties_trim(tv: Tensors, density: float, count: TrimCount = "ties-code") -> Tensors:
    """TIES step 1: keep the top entries of τ by magnitude, over the whole task vector (all matrices together), zero
    the rest; k = `ties_keep_count(n, density, count)`; entries tied with the k-th largest magnitude are all kept.
    Yadav et al., "TIES-Merging", NeurIPS 2023, arXiv 2306.01708."""
    flat = torch.cat([t.reshape(-1) for t in tv.values()]).abs()
    k = ties_keep_count(flat.numel(), density, count)
    thr = torch.kthvalue(flat.cpu(), flat.numel() - k + 1).values.to(flat.device)
    return {n: torch.where(t.abs() >= thr, t, torch.zeros_like(t)) for n, t in tv.items()}


def ties_merge(tvs: Sequence[Tensors], density: float, lam: float, count: TrimCount = "ties-code") -> Tensors:
    """TIES-Merging (batch): trim each τ_i (top-k% by magnitude), elect the sign per entry by total mass
    γ = sgn(Σ_i τ̂_i), disjoint mean over the entries whose sign agrees with γ (zeros excluded), scale by λ.
    Entries with γ = 0 merge to 0 [I]. Yadav et al., NeurIPS 2023, arXiv 2306.01708; defaults top-20%, λ = 0.55 in the
    MagMax code (research/merging-methods.md §3)."""
    trimmed = [ties_trim(tv, density, count) for tv in tvs]
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


def ties_resolve(
    acc: dict[str, Tensors], lam: float, merge: Literal["mean", "sum"] = "mean", zero_sign: Literal["zero", "majority"] = "zero"
) -> Tensors:
    """λ × (disjoint aggregate of the elected sign) from `ties_accumulate` sums, γ = sgn(pos + neg) per entry.

    merge "mean": the mean of the agreeing entries (the TIES paper; `ties_merge`); "sum": their sum (FusionBench's
    default `merge_func: sum` for DARE-TIES and continual TIES). zero_sign "zero": γ = 0 merges to 0 [I]; "majority":
    γ = 0 takes the majority sign sgn(Σ γ) over all entries of all matrices, and where that is 0 too the negative
    entries are kept — the TIES code's `resolve_zero_signs` and `disjoint_merge` (`where(γ > 0, τ > 0, τ < 0)`)."""
    signs = {n: torch.sign(acc["pos"][n] + acc["neg"][n]) for n in acc["pos"]}
    if zero_sign == "majority":
        majority = torch.sign(sum(g.sum() for g in signs.values()))
        signs = {n: torch.where(g == 0, majority, g) for n, g in signs.items()}
    elif zero_sign != "zero":
        raise ValueError(f"ties_resolve: zero_sign must be 'zero' or 'majority', got {zero_sign!r}")
    out = {}
    for n, elected in signs.items():
        pos, neg = acc["pos"][n], acc["neg"][n]
        if merge == "mean":
            pos, neg = pos / acc["npos"][n].clamp(min=1), neg / acc["nneg"][n].clamp(min=1)
        elif merge != "sum":
            raise ValueError(f"ties_resolve: merge must be 'mean' or 'sum', got {merge!r}")
        if zero_sign == "majority":
            out[n] = lam * torch.where(elected > 0, pos, neg)
        else:
            out[n] = lam * torch.where(elected > 0, pos, torch.where(elected < 0, neg, torch.zeros_like(pos)))
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


# ---- Tunable MagMax: max-|τ| with per-task quotas of winners ---------------------------------------------------------


def quotas(n: int, weights: Sequence[float]) -> list[int]:
    """Per-task numbers of entries of an n-element tensor: q_i = ⌊n·w_i⌋ with w_i = weights_i / Σ weights, the
    remainder n − Σ q_i (< number of positive weights) handed out one by one, round-robin from task 1.

    Hiroshima, Uchida, Shirakawa, "Tunable MagMax", ICPR 2026, arXiv 2605.20803, merge rule step 2
    (research/merging-methods.md §4). Two choices of ours [I]: the floors are taken in exact rational arithmetic on
    each weight read as the nearest fraction with denominator ≤ 10⁹ (so 0.29·100 gives 29 and 1/6·12 gives 2, where
    float arithmetic floors 28.999… to 28), and the
    round-robin skips tasks of weight 0 (the official code's round-robin runs over all tasks, so a task of preference
    0 could get an entry). Σ q_i = n always.
    """
    from fractions import Fraction

    if n < 0:
        raise ValueError(f"quotas: n must be >= 0, got {n}")
    fr = [Fraction(float(w)).limit_denominator(10**9) for w in weights]
    if not fr or any(w < 0 for w in fr) or sum(fr) == 0:
        raise ValueError(f"quotas: weights must be >= 0 with a positive sum, got {list(weights)}")
    total = sum(fr)
    q = [int(n * w // total) for w in fr]
    positive = [i for i, w in enumerate(fr) if w > 0]
    rest = n - sum(q)
    for k in range(rest):  # rest < len(positive): each fractional part is < 1
        q[positive[k % len(positive)]] += 1
    return q


def _last_argmax(mags: torch.Tensor) -> torch.Tensor:
    """Row index of the maximum of each column of a (k, N) tensor; ties → the later row (MagMax's `>=`)."""
    return mags.shape[0] - 1 - mags.flip(0).argmax(0)


def _randperm(k: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # drawn on the generator's (CPU) device, then moved: the same draws on every device
    return torch.randperm(k, generator=generator).to(device)


def tunable_magmax_assign(mags: torch.Tensor, q: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Winning task of each entry under quotas: a (T, N) tensor of |τ_i| and quotas q (Σ q = N) → (N,) task indices
    with exactly q_i entries won by task i.

    Tunable MagMax's assignment (arXiv 2605.20803; research/merging-methods.md §4, step 3):
    1. MagMax winners k*(p) = argmax_i |τ_i[p]| over the tasks with q_i > 0 (ties → the later task).
    2. For i = T..2 (tasks with q_i > 0): if task i wins c_i > q_i entries, c_i − q_i of them, drawn uniformly at
       random, go to argmax_{j<i} |τ_j[p]| (ties → the later of them); they may push task j over its quota, which is
       then resolved when j's turn comes.
    3. The first task's overflow (c_1 − q_1 random entries; the later tasks are then exactly the ones below quota,
       with total deficit c_1 − q_1) is handed to the later tasks below quota: for j = T..2, the freed entries whose
       largest |τ| among the tasks still below quota is τ_j, at most the deficit of j (a random subset if more); the
       remaining deficits are filled with random freed entries (j = T..2).
    Differences from the official code [I]: tasks with q_i = 0 are excluded instead of having τ_i zeroed (the same
    except where every other τ is 0 too); step 3 ranks the freed entries among the later tasks *below quota* (the
    code ranks them among all later tasks and sends entries whose best task is already full to the random fill).
    Randomness: one `torch.randperm` on `generator` (CPU) per overflowing task, in the order above.
    """
    T, N = mags.shape
    if len(q) != T or sum(q) != N or any(x < 0 for x in q):
        raise ValueError(f"tunable_magmax_assign: quotas {list(q)} must be {T} non-negative counts summing to {N}")
    device = mags.device
    tasks = [i for i in range(T) if q[i] > 0]  # eligible tasks, ascending
    ids = torch.tensor(tasks, device=device)
    m = mags[ids]
    win = ids[_last_argmax(m)]  # global task index per entry
    for pos in range(len(tasks) - 1, -1, -1):
        i = tasks[pos]
        won = (win == i).nonzero().squeeze(1)
        excess = won.numel() - q[i]
        if excess <= 0:
            continue
        drop = won[_randperm(won.numel(), generator, device)[:excess]]
        if pos > 0:  # to the largest |τ| among the earlier eligible tasks
            win[drop] = ids[:pos][_last_argmax(m[:pos, drop])]
            continue
        # the first eligible task: its overflow fills the later tasks below quota
        need = {j: q[j] - int((win == j).sum()) for j in tasks[1:]}
        under = [j for j in tasks[1:] if need[j] > 0]
        rows = torch.tensor([tasks.index(j) for j in under], device=device)
        best = torch.tensor(under, device=device)[_last_argmax(m[rows][:, drop])]
        free = torch.ones(drop.numel(), dtype=torch.bool, device=device)
        for j in reversed(under):
            cand = (free & (best == j)).nonzero().squeeze(1)
            if cand.numel() > need[j]:
                cand = cand[_randperm(cand.numel(), generator, device)[: need[j]]]
            win[drop[cand]] = j
            free[cand] = False
            need[j] -= cand.numel()
        for j in reversed(under):
            if need[j] > 0:
                rest = free.nonzero().squeeze(1)
                take = rest[_randperm(rest.numel(), generator, device)[: need[j]]]
                win[drop[take]] = j
                free[take] = False
    counts = torch.bincount(win, minlength=T).tolist()
    if counts != list(q):
        raise AssertionError(f"tunable_magmax_assign: winner counts {counts} differ from quotas {list(q)}")
    return win


def tunable_magmax(
    tvs: Sequence[Tensors],
    weights: Sequence[float],
    lam: float,
    generator: torch.Generator,
    winners: dict[str, torch.Tensor] | None = None,
) -> Tensors:
    """Tunable MagMax: per adapted matrix with n entries, task i supplies exactly q_i = quotas(n, w)_i entries — its
    own τ_i values at the positions `tunable_magmax_assign` gives it, starting from MagMax's max-|τ| winners — and
    the merge is λ·τ_merged (θ = W0 + λ·τ_merged, λ = 0.5 in the official code).

    Hiroshima, Uchida, Shirakawa, "Tunable MagMax", ICPR 2026, arXiv 2605.20803 (research/merging-methods.md §4).
    `weights` is the preference vector w (normalised here). Matrices are processed in sorted-name order, so the draws
    from `generator` do not depend on dict order; `winners`, if given, receives the task index of every entry.
    A one-hot w returns λ·τ_k; when MagMax's winner counts already equal the quotas the result is MagMax's.
    """
    if len(weights) != len(tvs):
        raise ValueError(f"tunable_magmax: {len(weights)} weights for {len(tvs)} task vectors")
    out = {}
    for n in sorted(_names(tvs)):
        stack = torch.stack([tv[n] for tv in tvs])
        flat = stack.reshape(len(tvs), -1)
        win = tunable_magmax_assign(flat.abs(), quotas(flat.shape[1], weights), generator)
        out[n] = lam * flat.gather(0, win.unsqueeze(0)).squeeze(0).reshape(stack.shape[1:])
        if winners is not None:
            winners[n] = win.reshape(stack.shape[1:])
    return {n: out[n] for n in _names(tvs)}


# ---- PAM (reconstruction): alignment penalty and running merge ----------------------------------------------------


def alignment_mask(ref: Tensors, top_fraction: float) -> dict[str, torch.Tensor]:
    """The entries PAM's penalty watches [I]: per matrix, the top `top_fraction` of |ref| (k = max(1, round(f·n)),
    entries tied with the k-th largest kept, zeros never), ref the previous merged delta D̂ = θ̂_{t−1} − W0."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"alignment_mask: top_fraction must be in (0, 1], got {top_fraction}")
    out = {}
    for n, r in ref.items():
        a = r.detach().abs().reshape(-1)
        k = max(1, round(top_fraction * a.numel()))
        thr = torch.kthvalue(a.cpu(), a.numel() - k + 1).values.to(a.device)
        out[n] = (r.detach().abs() >= thr) & (r != 0)
    return out


def alignment_penalty(tv: Tensors, ref: Tensors, mask: dict[str, torch.Tensor], kind: str = "sign") -> torch.Tensor:
    """PAM-style alignment penalty of a task vector τ_t against the previous merged delta D̂ on the masked entries M
    (differentiable in τ_t; D̂ and M are constants), relative to the merged energy on M:

        sign:       P = Σ_M relu(−sgn(D̂)·τ_t)² / Σ_M D̂²   (0 iff no watched entry of τ_t opposes D̂'s sign)
        deviation:  P = Σ_M (τ_t − D̂)² / Σ_M D̂²          (0 iff τ_t equals D̂ on M)

    Sums over all matrices. Reconstruction [I]: Sokar et al., "Continual Learning in Vision-Language Models via
    Aligned Model Merging", arXiv 2506.03189, state only that training "promotes learning weights aligned with the
    previous ones"; the loss is not public (research/merging-methods.md §6 sketch). The normalisation makes P
    dimensionless (P = 1 for τ_t = −D̂ on M under "sign", 1 for τ_t = 0 under "deviation"), so its weight μ does not
    depend on the size of the deltas. Returns 0 when nothing is masked.
    """
    if kind not in ("sign", "deviation"):
        raise ValueError(f"alignment_penalty: kind must be 'sign' or 'deviation', got {kind!r}")
    num = den = None
    for n, m in mask.items():
        r = ref[n].to(tv[n].dtype)
        if kind == "sign":
            e = torch.relu(-torch.sign(r) * tv[n])
        else:
            e = tv[n] - r
        a = (e.square() * m).sum()
        b = (r.square() * m).sum()
        num = a if num is None else num + a
        den = b if den is None else den + b
    if num is None:
        return torch.zeros(())
    # nothing masked ⇒ num = den = 0 ⇒ 0 (no host sync: den is clamped, not tested)
    return num / den.clamp(min=torch.finfo(den.dtype).tiny)


def running_merge(prev: Tensors | None, new: Tensors, t: int, weight: float | None = None) -> Tensors:
    """PAM's merge as reconstructed [I]: θ̂_t = (1 − β_t) θ̂_{t−1} + β_t θ_t on dense deltas (relative to W0),
    β_t = 1/t (a running mean: θ̂_t = θ̂_{t−1}·(t−1)/t + θ_t/t) or a constant `weight`; θ̂_1 = θ_1 (t is 1-based).
    Sokar et al., arXiv 2506.03189: "merge the newly trained task parameters with the previously merged ones"
    (research/merging-methods.md §6); the weights are not public."""
    if t < 1:
        raise ValueError(f"running_merge: t is 1-based, got {t}")
    if prev is None or t == 1:
        return dict(new)
    b = 1.0 / t if weight is None else weight
    return {n: (1.0 - b) * prev[n] + b * new[n] for n in new}
