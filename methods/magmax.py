"""MagMax: per-parameter maximum-magnitude merge of sequentially fine-tuned task vectors.

Tasks are fine-tuned sequentially (task t from θ*_{t−1}, the previous *fine-tuned* model, not the merge), τ_t =
θ*_t − W0 is cumulative, and θ̂_t = W0 + λ·τ_MM with τ_MM[p] = τ_{k*}[p], k* = argmax_i |τ_i[p]| (ties → later task).
Marczak, Twardowski, Trzciński, Cygert, "MagMax: Leveraging Model Merging for Seamless Continual Learning", ECCV 2024,
arXiv 2407.06322; protocol and λ = 0.5 from the official code (research/merging-methods.md §3). λ was chosen for
full fine-tuning of CLIP ViT-B/16 and "must be re-tuned" for LoRA deltas: a hyper-parameter. Online form: a running
max-|τ| (exactly the batch result, tests/test_merging_math.py), constant memory. MagMax's CLIP text heads are
replaced by the harness's per-task linear heads, concatenated (merging-methods.md §3, "Heads").
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.math.merging import magmax_update
from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge


@dataclass
class Params:
    lam: float = 0.5  # λ of the official code (full fine-tuning)
    start: Start = "sequential"  # MagMax trains task t from the previous fine-tuned model


@register
class MagMax(TaskVectorMerge):
    name = "magmax"
    description = "MagMax: sequential LoRA fine-tuning, per-entry max-|τ| over task vectors (online), scaled by λ"
    Params = Params

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.running = None

    def absorb(self, tau, task) -> None:
        self.running = magmax_update(self.running, tau)

    def merged(self):
        return {n: self.params.lam * t for n, t in self.running.items()}

    def acc_state(self) -> dict:
        return {"running": self.running}

    def load_acc_state(self, state: dict) -> None:
        self.running = state["running"]
