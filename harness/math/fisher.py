"""Diagonal empirical Fisher over the effective weights of the LoRA-adapted matrices.

Two estimators, the same for every task of a run:

* "per-sample" (default; the standard definition of the empirical Fisher):
      F = (1/N) Σ_n g_n ⊙ g_n,   g_n = ∂ℓ(x_n, y_n) / ∂W_eff,
  the mean over the N samples of the squared gradient of each sample's own loss. It does not depend on how the pass
  is batched, and a partial last batch weighs its samples like any other (research/pm-spec.md §2.2, corrected).
* "batch" (the older estimator, kept as an option and labelled as such):
      F = (1/N_b) Σ_b ḡ_b ⊙ ḡ_b,   ḡ_b = ∂ L_b / ∂W_eff,   L_b = mean loss of mini-batch b,
  squared gradients of the *mean* mini-batch loss averaged over the batches. It scales roughly like 1/batch size and
  a small last batch weighs as much as a full one, so α-type ratios built from it depend on the batch size.
* "batch-weighted" (BECAME's code, ankur-bohra/BECAME `compute_fisher_matrix_diag`):
      F = (1/N) Σ_b |b|·ḡ_b ⊙ ḡ_b,
  the batch estimator with each batch weighted by its size (identical to "batch" × the batch size when all batches
  are full).

"Empirical": the loss uses the ground-truth labels (P&M: "diagonal empirical Fisher", research/pm-spec.md §2.2);
callers may pass another loss (EWC uses the model's own argmax, as the MagMax code does). The pass runs in eval mode
(no dropout), without shuffling or perturbation, so the samples of a batch are independent.

The parameter space is the effective matrix W_eff = θ̂ + ΔW of every adapted layer (W_k, W_v per block), not the
LoRA factors: a Fisher over A and B cannot express P&M's cross-task terms (research/pm-spec.md §2.2, §10.2). For a
layer y = x W_effᵀ + b, ∂ℓ_n/∂W_eff = Σ_tokens (∂ℓ_n/∂y_n)ᵀ x_n, from a forward hook (x) and a gradient hook on y.
For the per-sample estimator the backward runs on the *sum* of the per-sample losses (B × the mean), so the hook's
g_n is exactly ∂ℓ_n/∂y_n; the per-sample matrices g_nᵀx_n are formed a chunk of samples at a time (bounded memory;
the same multiply-adds as one weight-gradient computation, so the pass costs about one forward + backward). Products
and squares in fp32 (or the model's dtype if wider), accumulated in fp32 or wider and returned as float64 (fp16/bf16
squares underflow; research/pm-spec.md §10.3). The forward and backward run under the run's autocast
(harness/core/precision.py: bf16 on CUDA, as in training; nothing on CPU, where the pass is fp32 and unchanged): the hooks
then see bf16 activations and output gradients, but every product g_nᵀx_n, its square and the sums are formed in fp32
(promoted from bf16), so only the inputs of the products carry bf16 rounding (relative ~2⁻⁸ per entry), never the
accumulation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ContextManager, Iterable, Literal

import torch

from harness.core.precision import autocast

if TYPE_CHECKING:
    from harness.model.backbone import CLModel

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Estimator = Literal["per-sample", "batch", "batch-weighted"]
ESTIMATORS = ("per-sample", "batch", "batch-weighted")
CHUNK_ELEMENTS = 1 << 24  # per-sample gradient entries formed at once per layer (64 MiB in fp32)


def per_sample_square_sum(g: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Σ_n (g_nᵀ x_n)⊙² for g (B, …, d_out) and x (B, …, d_in): the per-sample weight gradients of a linear layer
    (summed over the token dimensions), squared and summed over the batch, in `dtype`; formed in chunks of samples."""
    b = g.shape[0]
    g = g.reshape(b, -1, g.shape[-1])
    x = x.reshape(b, -1, x.shape[-1])
    out = torch.zeros(g.shape[-1], x.shape[-1], dtype=dtype, device=g.device)
    chunk = max(1, CHUNK_ELEMENTS // (g.shape[-1] * x.shape[-1]))
    for i in range(0, b, chunk):
        gw = torch.bmm(g[i : i + chunk].transpose(1, 2).to(dtype), x[i : i + chunk].to(dtype))
        out += gw.square().sum(0)
    return out


def empirical_fisher(
    model: "CLModel",
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn,
    estimator: Estimator = "per-sample",
    precision: Callable[[torch.device], ContextManager] = autocast,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher (float64, shape of each adapted weight) of `loss_fn(x, y)` w.r.t. every W_eff, over one pass
    of `batches`, with the estimator of the module docstring. `loss_fn` must return the *mean* over the batch of
    per-sample losses (each sample's loss depending on that sample only). Parameters and .grad are untouched.
    `precision(device)` is the context the forward and backward run in (default: the run's autocast)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"empirical_fisher: estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    per_sample = estimator == "per-sample"
    weighted = estimator == "batch-weighted"
    layers = model.lora_layers()
    fisher: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    seen: dict[str, int] = {}

    def on_grad(name: str) -> Callable[[torch.Tensor], None]:
        def hook(g: torch.Tensor) -> None:
            x = inputs.pop(name)
            dt = torch.promote_types(torch.promote_types(g.dtype, x.dtype), torch.float32)
            if per_sample:
                sq = per_sample_square_sum(g, x, dt)
            else:
                sq = (g.reshape(-1, g.shape[-1]).to(dt).T @ x.reshape(-1, x.shape[-1]).to(dt)).square()
                if weighted:
                    sq = sq * g.shape[0]
            fisher[name] = sq if name not in fisher else fisher[name] + sq

        return hook

    def on_forward(name: str):
        def hook(module, args, out):
            seen[name] = seen.get(name, 0) + 1
            inputs[name] = args[0].detach()
            out.register_hook(on_grad(name))

        return hook

    handles = [m.register_forward_hook(on_forward(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    n_terms = 0  # samples (per-sample, batch-weighted) or batches (batch)
    try:
        for x, y in batches:
            seen.clear()
            # A leaf input that requires grad puts every layer output in the graph, whatever is trainable.
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                with precision(x.device):  # the forward under autocast; the backward follows its dtypes
                    loss = loss_fn(x, y)
                    if per_sample:
                        loss = loss * x.shape[0]  # Σ_n ℓ_n: the hook's g_n is then ∂ℓ_n/∂y_n
                torch.autograd.backward(loss, inputs=[x])
            if any(c != 1 for c in seen.values()) or len(seen) != len(layers):
                raise RuntimeError("empirical_fisher: every adapted layer must run exactly once per forward")
            n_terms += x.shape[0] if per_sample or weighted else 1
    finally:
        for h in handles:
            h.remove()
        inputs.clear()
        model.train(was_training)
    if n_terms == 0:
        raise ValueError("empirical_fisher: no batches")
    return {n: (fisher[n].to(torch.float64) / n_terms) for n in layers}
