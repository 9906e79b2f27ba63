"""Pure math of TRM-recon: merging inside the augmented trajectory subspace of one task's fine-tuning run.

RECONSTRUCTION. Only the abstract of TRM (Wang & Deng, "Revitalizing the Beginning: Avoiding Storage Dependency for
Model Merging in Continual Learning", arXiv 2605.08311, 2026) is public: "an optimisation process within an augmented
trajectory subspace" with three objectives, "task alignment", "prediction consistency" and "gradient
responsiveness". Every formula below is the reconstruction of research/merging-methods.md §1.4, not the authors'.

Notation (per adapted k/v matrix l, dense, d_out × d_in):
    θ̂_{t−1}            the previous merged model (the base weights while task t trains)
    θ_t^(k), k=1..K     checkpoints of task t's run from θ̂_{t−1} (θ_t^(K) = the end point)
    d_{k,l} = θ_t^(k)_l − θ̂_{t−1,l}                       trajectory directions
    augmentation:  d_prev,l = θ̂_{t−1,l} − θ0_l  (rescale old knowledge),  d_rand,l = N(0, I)·‖d_{K,l}‖/‖N‖
    merged(c)_l = θ̂_{t−1,l} + Σ_j c_{j,l} d_{j,l}      c per direction j and per matrix l (or one per direction)
Objective on the current task's data only (x, y; n_old old classes first in the logits, current head after):
    L_align = CE(z_cur / τ_train, y)                         z = logits of merged(c)
    L_cons  = T² · KL( softmax(z⁰_old / T) ‖ softmax(z_old / T) )  z⁰ = logits of θ̂_{t−1} (c = 0)
    L_grad  = max(0, g0 − ‖∇_W L_probe‖₂)                    ∇ w.r.t. the effective weights W = merged(c)
    L_probe = CE(h(f_W(x)) / τ_train, ỹ)   h a fresh randomly initialised head, ỹ random labels (both seeded)
    L = [align]·L_align + β·[cons]·L_cons + γ·[grad]·L_grad
L_probe stands in for the *next* task's first loss: a new head that knows nothing yet and labels the current
features do not encode, as at the onset of task t+1. Its gradient norm is the merged model's responsiveness there
(the abstract's "gradient responsiveness"); it does not involve the current task's labels, so — unlike a hinge on
‖∇ L_align‖, which rewards *not* fitting the current task — it cannot be raised by under-fitting it. g0 is a ratio
times ‖∇_W L_probe‖ at θ̂_{t−1}: the merge must not leave the next task a flatter start than the previous merged
model did. L_grad's gradient w.r.t. c is a double back-propagation (create_graph); only c is optimised.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Tensors = dict[str, torch.Tensor]


def _f32(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 → fp32; fp64 stays fp64, for exact tests)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def checkpoint_epochs(epochs: int, k: int) -> list[int]:
    """The K 0-based epochs after which task t's run is saved, evenly spaced, the last = epochs − 1:
    e_j = ⌈j·E/K⌉ − 1, j = 1..K (every epoch when E ≤ K). [recon: "end of each 1/K of the epochs"]"""
    if epochs < 1 or k < 1:
        raise ValueError(f"checkpoint_epochs: need epochs >= 1 and k >= 1, got {epochs}, {k}")
    if epochs <= k:
        return list(range(epochs))
    return sorted({-(-j * epochs // k) - 1 for j in range(1, k + 1)})


def lora_product(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """Dense LoRA update ΔW = B·A·scaling (the weight-space point of a checkpoint relative to θ̂_{t−1})."""
    return (b.to(torch.promote_types(b.dtype, torch.float32)) @ a.to(torch.promote_types(a.dtype, torch.float32))) * scaling


def random_like_norm(d: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augmentation (b): an i.i.d. Gaussian direction with the Frobenius norm of `d` (drawn on CPU, seeded, so the
    same on every device; then moved to `d`'s device before it meets `d`'s norm, a device tensor off the CPU)."""
    noise = torch.randn(d.shape, generator=generator, dtype=torch.float64).to(d.device)
    return (noise * (d.double().norm() / noise.norm().clamp(min=1e-12))).to(d.dtype)


def stack_directions(directions: list[Tensors]) -> Tensors:
    """[{l: d_{j,l}}]_j → {l: tensor (J, d_out, d_in)}: the subspace basis of every matrix l."""
    names = directions[0].keys()
    return {n: torch.stack([d[n] for d in directions]) for n in names}


def init_coefficients(num_trajectory: int, num_aug: int, num_layers: int, per_layer: bool,
                      init_last: float = 0.5, init_other: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """c at the start of the merge: c_K = init_last (the end point), every other trajectory and augmentation
    direction init_other. Shape (J, L) with `per_layer`, else (J,); J = num_trajectory + num_aug, trajectory first."""
    shape = (num_trajectory + num_aug, num_layers) if per_layer else (num_trajectory + num_aug,)
    c = torch.full(shape, float(init_other), dtype=dtype)
    c[num_trajectory - 1] = float(init_last)
    return c


def combine(base: Tensors, directions: Tensors, coef: torch.Tensor) -> Tensors:
    """merged(c)_l = θ̂_l + Σ_j c_{j,l} d_{j,l}; `coef` (J, L) with layers in sorted-name order, or (J,) global.
    Differentiable in `coef`."""
    out = {}
    for i, n in enumerate(sorted(base)):
        c = coef[:, i] if coef.dim() == 2 else coef
        out[n] = base[n] + torch.tensordot(c.to(directions[n].dtype), directions[n], dims=1)
    return out


def consistency_kl(prev_old: torch.Tensor, new_old: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_cons = T²·KL(p ‖ q), p = softmax(prev_old/T), q = softmax(new_old/T), mean over the batch (the T² keeps the
    gradient scale independent of T, as in distillation, Hinton et al. 2015). Zero when there are no old classes."""
    if prev_old.shape[1] == 0:
        return new_old.sum() * 0.0
    log_p = F.log_softmax(_f32(prev_old) / temperature, dim=1)
    log_q = F.log_softmax(_f32(new_old) / temperature, dim=1)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum(1).mean()


def gradient_hinge(grad_norm: torch.Tensor, g0: float) -> torch.Tensor:
    """L_grad = max(0, g0 − ‖∇‖): penalises a merged model whose probe-loss gradient has shrunk below g0 ("gradient
    responsiveness": the next task must not start on a plateau); zero, with zero gradient, once ‖∇‖ ≥ g0."""
    return F.relu(g0 - grad_norm)


def probe_loss(probe_logits: torch.Tensor, probe_labels: torch.Tensor, ce_temperature: float) -> torch.Tensor:
    """L_probe = CE(h(f(x)) / τ_train, ỹ): the loss a fresh head h with labels ỹ unrelated to the features sees,
    i.e. the next task's first loss (module docstring)."""
    return F.cross_entropy(_f32(probe_logits) / ce_temperature, probe_labels)


def grad_norm_wrt(loss: torch.Tensor, weights: Tensors, create_graph: bool) -> torch.Tensor:
    """‖∂loss/∂W‖₂ over all matrices W (non-leaf tensors of the graph, e.g. merged(c)); with `create_graph` the norm
    is itself differentiable (double back-propagation)."""
    grads = torch.autograd.grad(loss, list(weights.values()), create_graph=create_graph, allow_unused=True)
    return torch.sqrt(sum(_f32(g).square().sum() for g in grads if g is not None))  # unused W: gradient 0


def trm_objective(
    forward: Callable[[Tensors], tuple[torch.Tensor, torch.Tensor | None]],
    base: Tensors,
    directions: Tensors,
    coef: torch.Tensor,
    y_local: torch.Tensor,
    prev_old: torch.Tensor | None,
    *,
    n_old: int,
    align: bool = True,
    consistency: bool = True,
    gradient: bool = True,
    beta: float = 1.0,
    gamma: float = 0.1,
    temperature: float = 2.0,
    ce_temperature: float = 1.0,
    g0: float = 0.0,
    probe_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L(c) = [align]·L_align + β·[cons]·L_cons + γ·[grad]·L_grad on one batch (module docstring).

    `forward(W)` returns the logits (old classes first, then the current head's) of the model whose adapted matrices
    are W, and the logits of the fresh probe head on the same features (None when `gradient` is off); `prev_old` the
    old-class logits of θ̂_{t−1} on the same batch (None or width 0 on the first task); `probe_labels` ỹ.
    Returns the loss (a graph to c) and the values of every term, switched on or not where they were computed."""
    weights = combine(base, directions, coef)
    if gradient and not coef.requires_grad:  # evaluating L(c) only (e.g. finite differences): ∇_W still needs W leaves
        weights = {n: w.detach().requires_grad_(True) for n, w in weights.items()}
    logits, probe_logits = forward(weights)
    ce = F.cross_entropy(_f32(logits[:, n_old:]) / ce_temperature, y_local)
    terms = {"align": float(ce.detach())}
    total = ce if align else ce.new_zeros(())
    if n_old > 0 and prev_old is not None:
        kl = consistency_kl(prev_old, logits[:, :n_old], temperature)
        terms["consistency"] = float(kl.detach())
        if consistency:
            total = total + beta * kl
    if gradient:
        if probe_logits is None or probe_labels is None:
            raise ValueError("trm_objective: the gradient term needs the probe head's logits and the probe labels")
        gn = grad_norm_wrt(probe_loss(probe_logits, probe_labels, ce_temperature), weights, create_graph=True)
        hinge = gradient_hinge(gn, g0)
        terms["grad_norm"] = float(gn.detach())
        terms["gradient"] = float(hinge.detach())
        total = total + gamma * hinge
    terms["total"] = float(total.detach())
    return total, terms
