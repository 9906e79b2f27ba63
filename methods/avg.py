"""Model averaging of task vectors: θ̂_t = W0 + (1/t) Σ_{i≤t} τ_i, τ_i = θ*_i − W0 (dense ΔW per adapted k/v matrix).

The "Model Averaging" row of P&M's tables (Qiu et al., NeurIPS 2025, arXiv 2505.22389); its exact definition is not
visible there, the standard one is θ̂_t = ((t−1)θ̂_{t−1} + θ*_t)/t (research/pm-spec.md §8.2 [I]). With the default
start "merged" (each task trains from θ̂_{t−1}, P&M's protocol) the two coincide. The MagMax code averages the same
way (Σ τ_i / n). Online: a running sum and a count. No hyper-parameters besides the start point (see
methods/_task_vectors.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge, add


@dataclass
class Params:
    start: Start = "merged"  # where task t trains from: merged θ̂_{t−1} (P&M protocol), sequential θ*_{t−1}, or W0


@register
class Average(TaskVectorMerge):
    name = "avg"
    description = "model averaging: θ̂_t = W0 + mean of the task vectors τ_i = θ*_i − W0 (running sum)"
    Params = Params
    reconstruction = "P&M's 'Model Averaging' row: its definition is not visible; the standard running mean is assumed"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.total = None
        self.count = 0

    def absorb(self, tau, task) -> None:
        self.total = add(self.total, tau)
        self.count += 1
        self.record = {"weight": 1.0 / self.count}

    def merged(self):
        return {n: t / self.count for n, t in self.total.items()}

    def acc_state(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load_acc_state(self, state: dict) -> None:
        self.total, self.count = state["total"], state["count"]
