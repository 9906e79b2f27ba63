"""DoP — Dual Projections (continual model merging without data): per adapted matrix, the merge of the previous
merged matrix and the new task's is optimised against both, each in the principal subspaces of its own task vector,
with MGDA loss weights smoothed by an EMA (harness/math/dop.py `dop_merge_matrix`):

    W_t = argmin_W  c_m·L(W − W_m; τ̄_{t−1}) + c_n·L(W − W_n; τ_t),   L(D; τ) = ‖S Uᵀ D‖² + ‖D V S‖²,

U, S, V the leading singular triplets of τ (energy share ε = 0.99999), W from (W_m + W_n)/2, 200 Adam steps at
lr 1e-4, c from MGDA with EMA β = 0.999 from (α, 1 − α) = (0.8, 0.2). θ̂_1 = θ*_1; θ̂_t = W0 + τ̄_t.
"Continual Model Merging without Data: Dual Projections for Balancing Stability and Plasticity", NeurIPS 2025
(FusionBench's `ContinualDOPForCLIP`). The paper was not read here: its title and venue are the code's docstring's,
its idea (dual projection losses, MGDA/EMA weighting) issue #23's summary. From the public code (tanganke/fusion_bench `method/dop/dop.py`,
`config/method/dop/dop.yaml`; read, not copied): the loss exactly (`cal_loss_i`), the rank rule (searchsorted,
which leaves out the direction that reaches ε), the loss-normalised gradients, the two-vector min-norm solver,
the EMA, the initialisation, the optimiser and every default. Tasks are fine-tuned independently from W0 (start
"pretrained"). The code optimises every trainable linear layer of a fully fine-tuned CLIP (others averaged); here
the LoRA-adapted k/v matrices (everything else is frozen). State: τ̄ only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.core.errors import ConfigError
from harness.math.dop import dop_merge_matrix
from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge


@dataclass
class Params:
    lr: float = 1e-4  # Adam learning rate (FusionBench config)
    steps: int = 200  # Adam steps per matrix and task
    mgda: bool = True  # MGDA loss weights (False: fixed α, 1 − α)
    ema: bool = True  # EMA of the MGDA weights, from (α, 1 − α)
    ema_beta: float = 0.999
    alpha: float = 0.8  # weight of the merged model's loss (initial EMA value with MGDA)
    epsilon: float = 0.99999  # energy share of the singular values kept
    space: Literal["uv", "u", "v"] = "uv"  # svd_proj_space
    rank_rule: Literal["code", "inclusive"] = "code"  # "inclusive" also keeps the direction reaching ε [I]
    start: Start = "pretrained"  # independent fine-tuning from W0 (FusionBench's model pool)

    def validate(self, where: str) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{where}.alpha: must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"{where}.epsilon: must be in [0, 1], got {self.epsilon}")
        if not 0.0 <= self.ema_beta <= 1.0:
            raise ConfigError(f"{where}.ema_beta: must be in [0, 1], got {self.ema_beta}")
        if self.steps < 0 or self.lr <= 0:
            raise ConfigError(f"{where}: steps must be >= 0 and lr > 0, got steps={self.steps}, lr={self.lr}")


@register
class DoP(TaskVectorMerge):
    name = "dop"
    description = "DoP: per matrix, Adam on the merged and new models' losses in their SVD subspaces, MGDA weights with EMA"
    Params = Params

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.merged_tv = None

    def absorb(self, tau, task) -> None:
        if self.merged_tv is None:
            self.merged_tv = dict(tau)
            self.record = {"c_merged": 1.0}
            return
        p = self.params
        out, weights = {}, []
        for n in sorted(tau):  # W0 cancels in W − W_i: work relative to W0
            zero = self.merged_tv[n].new_zeros(())
            w, c = dop_merge_matrix(
                zero, self.merged_tv[n], tau[n], lr=p.lr, steps=p.steps, mgda=p.mgda, ema=p.ema,
                ema_beta=p.ema_beta, alpha=p.alpha, epsilon=p.epsilon, space=p.space, rank_rule=p.rank_rule,
            )
            out[n] = w.to(tau[n].dtype)
            weights.append(c[0])
        self.merged_tv = {n: out[n] for n in tau}
        self.record = {"c_merged": sum(weights) / len(weights)}

    def merged(self):
        return self.merged_tv

    def acc_state(self) -> dict:
        return {"merged": self.merged_tv}

    def load_acc_state(self, state: dict) -> None:
        self.merged_tv = state["merged"]
