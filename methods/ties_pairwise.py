"""Continual TIES as FusionBench computes it: the merged task vector and the new one are TIES-merged pairwise and the
result is added to the merged vector,

    τ̄_1 = λ·τ_1,   τ̄_t = τ̄_{t−1} + λ·TIES(τ̄_{t−1}, τ_t),   θ̂_t = W0 + τ̄_t,

TIES = top-20 % trim of both vectors (int(density·n) + 1 entries), sign by mass (zero signs → the majority sign),
disjoint *sum* (harness/math/continual_merging.py `ties_pairwise_step`). Source: tanganke/fusion_bench
`method/opcm/ties_merging.py` (`ContinualTiesMergingForCLIP`) and `config/method/opcm/ties_merging.yaml` (λ = 0.5,
threshold 20, merge_func sum; read, not copied), the continual-TIES baseline of the OPCM and DoP papers, built on
Yadav et al., "TIES-Merging", NeurIPS 2023, arXiv 2306.01708. This is a different algorithm from `ties` (the exact
online TIES of all τ_i): the merged vector is re-trimmed at every step and increments accumulate; it is here for
like-for-like comparisons with FusionBench's numbers. Tasks are fine-tuned independently from W0 (start
"pretrained"), as in FusionBench. State: τ̄ only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.math.continual_merging import ties_pairwise_step
from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge, check_trim


@dataclass
class Params:
    density: float = 0.2  # fraction kept of each of the two vectors (FusionBench threshold 20)
    lam: float = 0.5  # scaling_factor (FusionBench config)
    merge: Literal["sum", "mean"] = "sum"  # merge_func (FusionBench config: sum)
    count: Literal["ties-code", "round"] = "ties-code"  # kept entries: int(density·n) + 1 (the code) or round
    start: Start = "pretrained"  # independent fine-tuning from W0 (FusionBench's model pool)

    def validate(self, where: str) -> None:
        check_trim(where, self.density, self.count)


@register
class TiesPairwise(TaskVectorMerge):
    name = "ties-pairwise"
    description = "FusionBench's continual TIES: merged vector += λ·TIES(merged vector, new task vector), recursively"
    Params = Params

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.merged_tv = None

    def absorb(self, tau, task) -> None:
        p = self.params
        self.merged_tv = ties_pairwise_step(self.merged_tv, tau, p.density, p.lam, p.count, p.merge)
        self.record = {"lam": p.lam}

    def merged(self):
        return self.merged_tv

    def acc_state(self) -> dict:
        return {"merged": self.merged_tv}

    def load_acc_state(self, state: dict) -> None:
        self.merged_tv = state["merged"]
