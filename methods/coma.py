"""CoMA — Continual Model Averaging: θ̂_t = (1 − w)·θ̂_{t−1} + w·θ*_t, a fixed-weight running average of weights.

Marouf, Roy, Tartaglione, Lathuilière, "Weighted Ensemble Models Are Strong Continual Learners", ECCV 2024,
arXiv 2312.08977 (CoMA row of P&M's tables). Each task trains from the merged model θ̂_{t−1} and the first task is
kept as trained (θ̂_1 = θ*_1), as in the official code (IemProg/CoFiMA: merge from the second task on, with the
previous merged model, `init_w = -1`). w = 0.5 (`wt_alpha`) in the official code's runs (train_all.sh and the
reproduction logs) for full fine-tuning of ViT-B/16 — a hyper-parameter here. With a LoRA per task, θ*_t =
θ̂_{t−1} + ΔW_t, so CoMA folds w·ΔW_t: P&M with a fixed α = w. The paper's classifier alignment (from SLCA) is not
part of this harness's head protocol and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.errors import ConfigError
from harness.math.merging import coma
from harness.method import Method, register


@dataclass
class Params:
    w: float = 0.5  # weight of the new model (official code's wt_alpha)

    def validate(self, where: str) -> None:
        if not 0.0 <= self.w <= 1.0:
            raise ConfigError(f"{where}.w: must be in [0, 1], got {self.w}")


@register
class CoMA(Method):
    name = "coma"
    description = "CoMA: fixed-weight running average θ̂_t = (1−w)θ̂_{t−1} + w·θ*_t of the merged weights"
    Params = Params
    constant_memory = True
    reconstruction = "P&M's 'CoMA' row: its weight is not stated; the CoMA code's w = 0.5 is assumed"

    def end_task(self, model, task, data) -> None:
        w = 1.0 if task.index == 0 else self.params.w
        prev = {n: t.detach().clone() for n, t in model.merged_weights().items()}
        delta = model.pop_adapter(self.adapter_name(task))
        model.set_weights(coma(prev, {n: prev[n] + delta[n] for n in prev}, w))
        self.record = {"w": w}
