"""TIES-Merging of task vectors: trim, elect sign, disjoint merge.

Per task, τ̂_t keeps the top `density` fraction of |τ_t| (over all adapted k/v matrices together) and zeros the
rest; per entry the sign γ = sgn(Σ_i τ̂_i) is elected by total mass; the merge is the mean over the τ̂_i whose sign
agrees with γ, times λ: θ̂_t = W0 + λ·disjoint_mean. Yadav et al., "TIES-Merging: Resolving Interference When
Merging Models", NeurIPS 2023, arXiv 2306.01708. Defaults from the MagMax code's TIES baseline (continual setting,
research/merging-methods.md §3): top-20%, λ = 0.55, tasks trained sequentially (start "sequential", τ_t cumulative)
— tuned for full fine-tuning of CLIP, not LoRA, so hyper-parameters. Online: positive/negative sums and counts of the
trimmed vectors give exactly the batch result (harness/math/merging.py `ties_accumulate`), so memory is constant.
Kept entries per task: int(density·n) + 1 as the TIES and MagMax code count them (`count: ties-code`, default), or
round(density·n) (`count: round`; harness/math/merging.py `ties_keep_count`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.math.merging import ties_accumulate, ties_resolve, ties_trim
from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge, check_trim


@dataclass
class Params:
    density: float = 0.2  # fraction of entries kept per task vector (MagMax code: top-20%)
    lam: float = 0.55  # λ (MagMax code)
    start: Start = "sequential"  # MagMax's continual protocol
    count: Literal["ties-code", "round"] = "ties-code"  # kept entries: int(density·n) + 1 (TIES/MagMax code) or round

    def validate(self, where: str) -> None:
        check_trim(where, self.density, self.count)


@register
class Ties(TaskVectorMerge):
    name = "ties"
    description = "TIES-Merging: top-k% trim of each task vector, sign election by mass, disjoint mean, scaled by λ"
    Params = Params

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.acc = None

    def absorb(self, tau, task) -> None:
        self.acc = ties_accumulate(self.acc, ties_trim(tau, self.params.density, self.params.count))

    def merged(self):
        return ties_resolve(self.acc, self.params.lam)

    def acc_state(self) -> dict:
        return {"acc": self.acc}

    def load_acc_state(self, state: dict) -> None:
        self.acc = state["acc"]
