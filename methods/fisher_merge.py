"""Continual Fisher merging: Fisher-weighted averaging of the task models with the old tasks' Fisher accumulated,

    τ̄_t = (S_{t−1} ⊙ τ̄_{t−1} + F̃_t ⊙ τ_t) / (S_{t−1} + F̃_t),   S_t = S_{t−1} + F̃_t,   F̃_t = F_t + 10⁻⁶,

θ̂_t = W0 + τ̄_t, F_t the diagonal Fisher at task t's trained point θ*_t (harness/math/continual_merging.py
`fisher_merge_step`). By induction τ̄_t = Σ_i F̃_i τ_i / Σ_i F̃_i: Matena & Raffel's Fisher merging ("Merging Models
with Fisher-Weighted Averaging", NeurIPS 2022, arXiv 2111.09832) of all task models so far, computed online with
one accumulated Fisher (constant memory). The floor 10⁻⁶ is FusionBench's `minimal_fisher_weight`. Tasks are
fine-tuned independently from W0 by default (start "pretrained", the paper's setting of models fine-tuned from one
pretrained model).

Relation to `cofima`: CoFiMA is a Fisher-weighted *running* average with a fixed weight w between the previous merge
and the new model, using only the last two tasks' Fisher (clipped at 1e-4), each task trained from θ̂_{t−1};
fisher-merge weights the merge by the Fisher *accumulated over all tasks* (no w, no clip), so an old task's
parameters keep their weight as tasks accumulate. [I]: the Fisher (per-sample empirical on the ground-truth labels,
over the effective k/v weights, harness/math/fisher.py) and the start point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.core.errors import ConfigError
from harness.math.continual_merging import fisher_merge_step
from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge


@dataclass
class Params:
    floor: float = 1e-6  # added to every Fisher entry (FusionBench minimal_fisher_weight)
    fisher: Literal["per-sample", "batch"] = "per-sample"  # Fisher estimator (harness/math/fisher.py) [I]
    start: Start = "pretrained"  # independent fine-tuning from W0 (Fisher merging's setting) [I]

    def validate(self, where: str) -> None:
        if not self.floor >= 0.0:
            raise ConfigError(f"{where}.floor: must be >= 0, got {self.floor}")


@register
class FisherMerge(TaskVectorMerge):
    name = "fisher-merge"
    description = "continual Fisher merging: Fisher-weighted average of all task vectors with the old tasks' Fisher accumulated (online)"
    Params = Params
    state_changes_in_task = False  # τ̄ and S change only in end_task: epoch checkpoints leave them out
    reconstruction = "continual form of Fisher merging with an accumulated Fisher; Fisher estimator, Fisher space (effective k/v weights) and start point chosen here"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.merged_tv = None
        self.fisher_sum = None
        self._fisher = None

    def end_task(self, model, task, data) -> None:
        self._fisher = self.task_fisher(model, task, data)  # at θ*_t, before the adapter is popped
        super().end_task(model, task, data)
        self._fisher = None

    def absorb(self, tau, task) -> None:
        assert self._fisher is not None
        self.merged_tv, self.fisher_sum = fisher_merge_step(self.merged_tv, self.fisher_sum, tau, self._fisher, self.params.floor)
        new = sum(float(self._fisher[n].sum()) for n in tau)
        total = sum(float(s.sum()) for s in self.fisher_sum.values())
        self.record = {"fisher_share_new": new / total if total > 0 else 1.0}

    def merged(self):
        return self.merged_tv

    def acc_state(self) -> dict:
        return {"merged": self.merged_tv, "fisher_sum": self.fisher_sum}

    def load_acc_state(self, state: dict) -> None:
        self.merged_tv, self.fisher_sum = state["merged"], state["fisher_sum"]
