"""OPCM — Orthogonal Projection-based Continual Merging: each new task vector is projected orthogonally to the
merged vector's leading singular directions, added, and the sum rescaled to the average task-vector norm.

Per adapted matrix, with τ̄_{t−1} = U S Vᵀ: Π_t(τ_t) = U P Vᵀ, P = Uᵀ τ_t V with its diagonal and its leading r×r block
zeroed (r: first index where the cumulative share of S exceeds α); S_t = λ_{t−1} τ̄_{t−1} + Π_t(τ_t);
λ_t = ‖S_t‖ / mean_{i≤t} ‖τ_i‖; τ̄_t = S_t / λ_t; θ̂_t = W0 + τ̄_t (harness/math/continual_merging.py `opcm_step`).
Tang, Yang, Shen, Luo, Hu, Du, Tao, "Merging Models on the Fly Without Retraining: A Sequential Approach to
Scalable Continual Model Merging", arXiv 2501.09522 (NeurIPS 2025). From the paper (its abstract): new parameter
updates projected onto subspaces orthogonal to the merged updates, and an adaptive scaling that keeps the parameter
distances stable. From the public code
(tanganke/fusion_bench `method/opcm/opcm.py`, read, not copied): the exact projection (zero the diagonal and the
leading r×r block in the merged vector's singular basis), the split-rank rule, λ_t = ‖S_t‖/n̄_t with the norms over the
whole task vector, τ̄_1 = τ_1, and α = 0.5 (`config/method/opcm/opcm.yaml`). Tasks are fine-tuned independently from
W0 as in FusionBench (start "pretrained"). The code projects every linear layer of a fully fine-tuned CLIP; here
only the LoRA-adapted k/v matrices carry task vectors. [I] `diagonal: range` (default): the diagonal entries are
zeroed only for the merged vector's nonzero singular values — a LoRA merge is rank-deficient, its null-space singular
vectors are arbitrary, and zeroing their diagonal entries (the code's rule, `diagonal: all`) makes the merge jump with
1-ulp changes. State: τ̄, λ and the sum of norms (constant memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.core.errors import ConfigError
from harness.math.continual_merging import opcm_step
from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge


@dataclass
class Params:
    alpha: float = 0.5  # share of the merged vector's singular-value mass protected (FusionBench config)
    start: Start = "pretrained"  # independent fine-tuning from W0 (FusionBench's model pool)
    diagonal: Literal["range", "all"] = "range"  # zero P_ii of nonzero singular values only [I], or all (the code)

    def validate(self, where: str) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{where}.alpha: must be in [0, 1], got {self.alpha}")


@register
class OPCM(TaskVectorMerge):
    name = "opcm"
    description = "OPCM: each task vector projected off the merged vector's leading singular directions, summed, rescaled to the mean task-vector norm"
    Params = Params
    reconstruction = "the code zeroes every diagonal entry of Uᵀτ_tV; here only those of the merged vector's nonzero singular values (LoRA merges are rank-deficient, their null-space singular vectors arbitrary); `diagonal: all` is the code's rule"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.merged_tv = None
        self.lam = 1.0
        self.norm_sum = 0.0
        self.count = 0

    def absorb(self, tau, task) -> None:
        self.count += 1
        self.merged_tv, self.lam, self.norm_sum, self.record = opcm_step(
            self.merged_tv, self.lam, self.norm_sum, self.count, tau, self.params.alpha, self.params.diagonal
        )

    def merged(self):
        return self.merged_tv

    def acc_state(self) -> dict:
        return {"merged": self.merged_tv, "lam": self.lam, "norm_sum": self.norm_sum, "count": self.count}

    def load_acc_state(self, state: dict) -> None:
        self.merged_tv, self.lam = state["merged"], state["lam"]
        self.norm_sum, self.count = state["norm_sum"], state["count"]
