"""EWC on the LoRA-adapted effective weights, with an online Fisher.

Each task trains a new LoRA from θ̂_{t−1} and folds it fully (as seq-lora); the loss adds the EWC penalty on the
effective k/v matrices W_eff = θ̂_{t−1} + ΔW_t, anchored at θ̂_{t−1} (the previous task's end point):

    L = CE_t + (λ/2) Σ_m Σ_p F_m[p] (W_eff,m[p] − θ̂_{t−1,m}[p])² = CE_t + (λ/2) Σ_m ⟨F_m, ΔW_m ⊙ ΔW_m⟩,

ΔW_m = B_m·A_m·scaling (differentiable in the LoRA factors). Kirkpatrick et al., "Overcoming catastrophic forgetting
in neural networks", PNAS 2017, arXiv 1612.00796. Online Fisher and labels as in the MagMax code's EWC baseline
(research/merging-methods.md §3, §8.4; danielm1405/magmax `ewc.py`): F starts at 0 and after task t
F ← decay·F + (1 − decay)·F_t with decay 0.5 — so F = (1 − decay)·F_1 = 0.5·F_1 after the first task, as in that
code (not F_1) — F_t the diagonal Fisher (harness/math/fisher.py) with the model's own argmax as targets, by default the
"batch" estimator (that code squares the gradient of each mini-batch's mean loss; `fisher: per-sample` gives the
standard per-sample one). λ = 1e6 there is for full fine-tuning of CLIP; for LoRA it "must be re-searched" (§8.4 suggests 1e2..1e6): the default 1e4 [I] is the
middle of that range on a log scale, not tuned on any benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.core.precision import full_precision
from harness.math.fisher import empirical_fisher
from harness.method import Method, register


@dataclass
class Params:
    lam: float = 1e4  # penalty strength λ [I]; re-tune per backbone/benchmark
    decay: float = 0.5  # online Fisher: F ← decay·F + (1−decay)·F_t (MagMax code's EMA)
    fisher_labels: Literal["predicted", "true"] = "predicted"  # targets of the Fisher's CE (MagMax code: argmax)
    fisher: Literal["per-sample", "batch"] = "batch"  # Fisher estimator (harness/math/fisher.py; MagMax code: batch)

    def validate(self, where: str) -> None:
        if self.lam < 0:
            raise ConfigError(f"{where}.lam: must be >= 0, got {self.lam}")
        if not 0.0 <= self.decay <= 1.0:
            raise ConfigError(f"{where}.decay: must be in [0, 1], got {self.decay}")


@register
class EWC(Method):
    name = "ewc"
    description = "EWC on the LoRA-adapted k/v weights (online diagonal Fisher), LoRA folded fully after each task"
    Params = Params
    constant_memory = True

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.fisher: dict[str, torch.Tensor] | None = None

    def penalty(self, model, task) -> torch.Tensor:
        """(λ/2) Σ_m ⟨F_m, ΔW_m²⟩ of the current task's LoRA, in fp32."""
        assert self.fisher is not None
        name = self.adapter_name(task)
        total = torch.zeros((), device=next(iter(self.fisher.values())).device)
        with full_precision(total.device):
            for n, m in model.lora_layers().items():
                dw = (m.lora_B[name].weight.float() @ m.lora_A[name].weight.float()) * m.scaling[name]
                total = total + (self.fisher[n] * dw.square()).sum()
        return 0.5 * self.params.lam * total

    def training_loss(self, model, x, y, task) -> torch.Tensor:
        loss = super().training_loss(model, x, y, task)
        if self.fisher is None or self.params.lam == 0:
            return loss
        return loss + self.penalty(model, task)

    def _fisher_loss(self, model, task):
        temp = self.train_cfg.temperature

        def loss_fn(x, y):
            logits = model.heads.heads[-1](model.features(x)).float() / temp
            target = logits.argmax(1).detach() if self.params.fisher_labels == "predicted" else y - task.offset
            return F.cross_entropy(logits, target)

        return loss_fn

    def end_task(self, model, task, data) -> None:
        f_t = empirical_fisher(
            model, data.batches(self.train_cfg.batch_size), self._fisher_loss(model, task), self.params.fisher
        )
        f_t = {n: f.float() for n, f in f_t.items()}
        if self.fisher is not None and self.params.lam > 0:
            self.record = {"penalty_at_end": float(self.penalty(model, task).detach())}
        model.fold_adapter(self.adapter_name(task), 1.0)
        d = self.params.decay
        # F starts at 0 (the source's EMA): the first task contributes (1 − decay)·F_1
        self.fisher = {n: (1 - d) * f_t[n] + (d * self.fisher[n] if self.fisher is not None else 0) for n in f_t}


    def state_dict(self) -> dict:
        return {"fisher": self.fisher}

    def load_state_dict(self, state: dict) -> None:
        self.fisher = state["fisher"]
