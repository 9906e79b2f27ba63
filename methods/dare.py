"""DARE: drop-and-rescale each task's own fine-tuning delta, then average (or task arithmetic).

DARE is defined on a fine-tuned model's own delta: ΔW̃_t = DARE_p(ΔW_t), every entry of the task's LoRA product
dropped with probability p, the kept ones scaled by 1/(1−p); then τ̃_t = (start_t − W0) + ΔW̃_t and
θ̂_t = W0 + mean τ̃_i (combine "average") or W0 + λ Σ τ̃_i (combine "task-arithmetic"). The start point's part of τ_t
(with start "merged", the previous merge D̂_{t−1}) is never dropped again, so old knowledge is not re-randomised at
every task. Yu et al., "Language Models are Super Mario:
Absorbing Abilities from Homologous Models as a Free Lunch", ICML 2024, arXiv 2311.03099. The "DARE" row of P&M's
tables (Qiu et al., arXiv 2505.22389) does not state p or the combination [?]; here [I]: start "merged" (P&M's
protocol, as for its averaging row), combine "average" (the row sits next to Model Averaging), p = 0.5 (a neutral
value; the DARE paper uses up to 0.9 for full fine-tuning deltas of LLMs). All are hyper-parameters, not tuned for
LoRA. The mask of task t is drawn once, on ΔW_t, from a generator seeded by (run seed, task), so a running sum of the
τ̃_i is enough (constant memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.core.errors import ConfigError
from harness.core.seeding import generator
from harness.math.merging import dare
from harness.method import register
from methods._task_vectors import Start
from methods.avg import Average


@dataclass
class Params:
    p: float = 0.5  # drop rate [I]
    combine: Literal["average", "task-arithmetic"] = "average"
    lam: float = 1.0  # λ, only for combine = "task-arithmetic"
    start: Start = "merged"

    def validate(self, where: str) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ConfigError(f"{where}.p: must be in [0, 1), got {self.p}")


@register
class Dare(Average):
    name = "dare"
    draws_random = True  # the drop masks
    description = "DARE: randomly drop p of each task's own delta ΔW_t, rescale by 1/(1−p), then average the task vectors"
    Params = Params
    reconstruction = "P&M's 'DARE' row: drop rate and combination not stated; p = 0.5 and averaging assumed"

    def task_delta(self, delta, task):
        dropped = dare(delta, self.params.p, generator(self.seed, "dare", task.index))
        kept = sum(int((d != 0).sum()) for d in dropped.values()) / max(1, sum(t.numel() for t in delta.values()))
        self._kept = kept
        return dropped  # τ̃_t = start + DARE(ΔW_t); the running sum and count of model averaging take it as is

    def absorb(self, tau, task) -> None:
        super().absorb(tau, task)
        self.record = {"kept_fraction": self._kept}

    def merged(self):
        if self.params.combine == "average":
            return super().merged()
        return {n: self.params.lam * t for n, t in self.total.items()}
