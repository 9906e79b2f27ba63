"""Task arithmetic: θ̂_t = W0 + λ Σ_{i≤t} τ_i, τ_i = θ*_i − W0 (dense ΔW per adapted k/v matrix).

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, arXiv 2212.04089: task vectors from independent
fine-tuning of the pretrained model, λ chosen on held-out data (typically 0.3–0.5 for full fine-tuning,
research/merging-methods.md §8.3). Defaults: start "pretrained" (the paper's independent fine-tuning; with a
"merged" or "sequential" start the τ_i are cumulative and λΣτ_i double-counts earlier tasks), λ = 0.4, the middle of
that range [I] — tuned for full fine-tuning, not LoRA, so a hyper-parameter to re-tune. Online: a running sum.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge, add


@dataclass
class Params:
    lam: float = 0.4  # scaling λ (full-fine-tuning range 0.3–0.5; re-tune for LoRA)
    start: Start = "pretrained"  # independent fine-tuning from W0, as in the paper


@register
class TaskArithmetic(TaskVectorMerge):
    name = "task-arith"
    description = "task arithmetic: θ̂_t = W0 + λ·Σ task vectors (independent LoRA per task from W0 by default)"
    Params = Params

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.total = None

    def absorb(self, tau, task) -> None:
        self.total = add(self.total, tau)
        self.record = {"lam": self.params.lam}

    def merged(self):
        return {n: self.params.lam * t for n, t in self.total.items()}

    def acc_state(self) -> dict:
        return {"total": self.total}

    def load_acc_state(self, state: dict) -> None:
        self.total = state["total"]
