"""CoFiMA — Continual Fisher-weighted Model Averaging: CoMA with a per-entry Fisher weighting,

    θ̂_t = ((1−w)·F_{t−1} ⊙ θ̂_{t−1} + w·F_t ⊙ θ*_t) / ((1−w)·F_{t−1} + w·F_t),

F_t the diagonal Fisher at task t's trained point θ*_t, F_{t−1} the one of the previous task's trained point (the
official code keeps the Fisher of every task's end point and merges with the last two), both clipped at
`fisher_max` = 1e-4 (the code's `fishermax`). Marouf et al., "Weighted Ensemble Models Are Strong Continual
Learners", ECCV 2024, arXiv 2312.08977; code IemProg/CoFiMA. w = 0.5 as in the code's runs; the first task is kept
as trained; each task trains from θ̂_{t−1}. Here the Fisher is the harness's empirical Fisher over the effective
k/v weights (harness/math/fisher.py) — the code's is over all weights of a fully fine-tuned ViT, so the 1e-4 clip (a
scale-dependent constant) and w are hyper-parameters for LoRA; the fraction of clipped entries is recorded. Entries
with zero Fisher in both fall back to CoMA [I]. Classifier alignment (from SLCA) is left out, as for CoMA.
The Fisher estimator defaults to "batch" (squared gradients of mini-batch-mean losses, harness/math/fisher.py): the scale the
1e-4 clip is expressed in depends on the estimator, and this keeps the harness's earlier CoFiMA runs comparable [I];
`fisher: per-sample` gives the standard empirical Fisher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from harness.core.errors import ConfigError
from harness.math.merging import cofima
from harness.method import Method, register


@dataclass
class Params:
    w: float = 0.5  # weight of the new model (official code's wt_alpha)
    fisher_max: Optional[float] = 1e-4  # clip of the Fisher entries (official code); None: no clip
    fisher: Literal["per-sample", "batch"] = "batch"  # Fisher estimator (harness/math/fisher.py) [I]

    def validate(self, where: str) -> None:
        if not 0.0 <= self.w <= 1.0:
            raise ConfigError(f"{where}.w: must be in [0, 1], got {self.w}")


@register
class CoFiMA(Method):
    name = "cofima"
    description = "CoFiMA: Fisher-weighted running average of the merged weights (per-entry CoMA)"
    Params = Params
    constant_memory = True
    reconstruction = "adapted to LoRA: Fisher over the effective k/v weights (the paper fine-tunes the full ViT)"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.f_prev = None

    def end_task(self, model, task, data) -> None:
        fisher = self.task_fisher(model, task, data)
        prev = {n: t.detach().clone() for n, t in model.merged_weights().items()}
        delta = model.pop_adapter(self.adapter_name(task))
        new = {n: prev[n] + delta[n] for n in prev}
        if self.f_prev is None:  # the first task is kept as trained
            model.set_weights(new)
            self.record = {"w": 1.0}
        else:
            model.set_weights(cofima(prev, new, self.f_prev, fisher, self.params.w, self.params.fisher_max))
            self.record = {"w": self.params.w}
        if self.params.fisher_max is not None:
            clipped = sum(int((f > self.params.fisher_max).sum()) for f in fisher.values())
            self.record["fisher_clipped_fraction"] = clipped / sum(f.numel() for f in fisher.values())
        self.f_prev = {n: f.float() for n, f in fisher.items()}

    def state_dict(self) -> dict:
        return {"f_prev": self.f_prev}

    def load_state_dict(self, state: dict) -> None:
        self.f_prev = state["f_prev"]
