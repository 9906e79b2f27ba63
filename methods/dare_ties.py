"""DARE-TIES: each task's own delta is dropped at random and rescaled (DARE), then the task vectors are merged by
TIES (top-k trim, sign election, disjoint aggregate), scaled by λ:

    τ̃_i = TRIM_k(DARE_p(τ_i)),   γ = sgn(Σ_i τ̃_i) (zero → the majority sign),
    θ̂_t = W0 + λ·Σ_{i≤t} τ̃_i·[sgn τ̃_i = γ]            (merge "sum"; "mean" divides by the agreeing count).

Yu et al., "Language Models are Super Mario" (DARE), ICML 2024, arXiv 2311.03099, combined with Yadav et al.,
"TIES-Merging", NeurIPS 2023, arXiv 2306.01708, as FusionBench runs it (tanganke/fusion_bench
`method/dare/ties_merging.py` + `config/method/dare/ties_merging.yaml`, read, not copied): sparsity p = 0.5 with
rescale, then the full TIES of the TIES code — top-20 % trim (int(density·n) + 1 entries), majority-resolved sign,
merge_func "sum", λ = 0.5. Tasks are fine-tuned independently from W0 (start "pretrained"), so τ_t is the task's
own delta and DARE never re-drops merged knowledge (with another start, only ΔW_t is dropped, as in methods/dare.py).
The DARE mask of task t is drawn from a generator seeded by (run seed, "dare", t). Online: the TIES sums
(`ties_accumulate`) give exactly the batch result, so memory is constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.core.errors import ConfigError
from harness.core.seeding import generator
from harness.math.merging import dare, ties_accumulate, ties_resolve, ties_trim
from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge, check_trim


@dataclass
class Params:
    p: float = 0.5  # DARE drop rate (FusionBench sparsity_ratio)
    density: float = 0.2  # TIES trim: fraction kept (FusionBench threshold 20)
    lam: float = 0.5  # λ (FusionBench scaling_factor)
    merge: Literal["sum", "mean"] = "sum"  # TIES disjoint aggregate (FusionBench merge_func: sum)
    count: Literal["ties-code", "round"] = "ties-code"  # kept entries: int(density·n) + 1 (the code) or round
    start: Start = "pretrained"  # independent fine-tuning from W0 (FusionBench's model pool)

    def validate(self, where: str) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ConfigError(f"{where}.p: must be in [0, 1), got {self.p}")
        check_trim(where, self.density, self.count)


@register
class DareTies(TaskVectorMerge):
    name = "dare-ties"
    description = "DARE-TIES: drop p of each task's own delta and rescale, then TIES (trim, sign election, disjoint sum) scaled by λ"
    draws_random = True  # the DARE drop masks
    Params = Params

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.acc = None

    def task_delta(self, delta, task):
        return dare(delta, self.params.p, generator(self.seed, "dare", task.index))

    def absorb(self, tau, task) -> None:
        self.acc = ties_accumulate(self.acc, ties_trim(tau, self.params.density, self.params.count))
        self.record = {"lam": self.params.lam}

    def merged(self):
        return ties_resolve(self.acc, self.params.lam, merge=self.params.merge, zero_sign="majority")

    def acc_state(self) -> dict:
        return {"acc": self.acc}

    def load_acc_state(self, state: dict) -> None:
        self.acc = state["acc"]
