"""Diagonal empirical Fisher over the effective weights of the LoRA-adapted matrices.

Estimator (the same for every task and every method that uses it):

    F = (1/N_b) Σ_batches g_b ⊙ g_b,   g_b = ∂ L_b / ∂W_eff,   L_b = mean over the batch of the loss

i.e. squared gradients of the *mean* mini-batch loss, averaged over the batches of one pass (no shuffling, no
perturbation, eval mode). "Empirical": the loss uses the ground-truth labels (P&M: "diagonal empirical Fisher",
research/pm-spec.md §2.2); callers may pass another loss (EWC uses the model's own argmax, as the MagMax code does).

The parameter space is the effective matrix W_eff = θ̂ + ΔW of every adapted layer (W_k, W_v per block), not the
LoRA factors: a Fisher over A and B cannot express P&M's cross-task terms (research/pm-spec.md §2.2, §10.2). For a
layer y = x W_effᵀ + b, ∂L/∂W_eff = Σ_tokens (∂L/∂y)ᵀ x, obtained from a forward hook (x) and a gradient hook on y,
so no per-sample loop and no second copy of the weights. Gradients in fp32 (or the model's dtype if wider), squares
summed in float64 (fp16/bf16 squares underflow; research/pm-spec.md §10.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import torch

if TYPE_CHECKING:
    from harness.backbone import CLModel

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def empirical_fisher(
    model: "CLModel", batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: LossFn
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher (float64, shape of each adapted weight) of `loss_fn(x, y)` w.r.t. every W_eff, averaged over
    `batches`. `loss_fn` must return the mean loss of the batch. The model's parameters and .grad are untouched."""
    layers = model.lora_layers()
    fisher = {}
    for n, m in layers.items():
        w = m.get_base_layer().weight
        fisher[n] = torch.zeros(w.shape, dtype=torch.float64, device=w.device)
    inputs: dict[str, torch.Tensor] = {}
    seen: dict[str, int] = {}

    def on_grad(name: str) -> Callable[[torch.Tensor], None]:
        def hook(g: torch.Tensor) -> None:
            x = inputs.pop(name)
            dt = torch.promote_types(torch.promote_types(g.dtype, x.dtype), torch.float32)
            gw = g.reshape(-1, g.shape[-1]).to(dt).T @ x.reshape(-1, x.shape[-1]).to(dt)
            fisher[name] += gw.to(torch.float64).square()

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
    n_batches = 0
    try:
        for x, y in batches:
            seen.clear()
            # A leaf input that requires grad puts every layer output in the graph, whatever is trainable.
            x = x.detach().requires_grad_(True)
            with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
                loss = loss_fn(x, y)
                torch.autograd.backward(loss, inputs=[x])
            if any(c != 1 for c in seen.values()) or len(seen) != len(layers):
                raise RuntimeError("empirical_fisher: every adapted layer must run exactly once per forward")
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        inputs.clear()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("empirical_fisher: no batches")
    return {n: f / n_batches for n, f in fisher.items()}
