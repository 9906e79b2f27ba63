"""PAM — aligned model merging, RECONSTRUCTED: Sokar, Dziugaite, Arnab, Iscen, Castro, Schmid, "Continual Learning in
Vision-Language Models via Aligned Model Merging", arXiv 2506.03189 (Google DeepMind).

What the paper states (research/merging-methods.md §6): instead of sequentially updating one set of weights, after
each task the newly trained task parameters are merged with the previously merged ones; during training a simple
mechanism promotes learning weights aligned with the previous ones, so that the merge interferes little; only the
merged model is kept (no old data, no task id). The exact alignment loss and merge weights are not public and no
code was found, so everything below is our reconstruction [I] — the simplest one that matches that description,
with every choice a hyper-parameter:

* Start: task t trains a fresh LoRA on top of the running merge θ̂_{t−1} (start "merged"), so its task vector is
  τ_t = D̂_{t−1} + ΔW_t, D̂ = θ̂ − W0 the merged delta, ΔW_t = B_t·A_t·scaling (dense, per adapted k/v matrix).
* Alignment penalty (`training_loss` = CE + μ·P): on the entries M of each matrix where |D̂_{t−1}| is in the top
  `top_fraction`, "sign": P = Σ_M relu(−sgn(D̂)·τ_t)² / Σ_M D̂² (τ_t must not flip the merged sign on the entries that
  carry the merge) or "deviation": P = Σ_M (τ_t − D̂)² / Σ_M D̂² (must not move them). Differentiable in the LoRA
  factors through `lora_delta`; off for task 1 (nothing merged yet). harness/math/merging.py `alignment_penalty`.
* Merge: θ̂_t = (1 − β_t)·θ̂_{t−1} + β_t·θ*_t on the dense deltas, β_t = 1/t (running mean, default) or a constant
  `merge_weight`; harness/math/merging.py `running_merge`. With start "merged" this is θ̂_t = θ̂_{t−1} + β_t·ΔW_t.
Defaults [I]: μ = 1 (P is dimensionless: 1 for a fully sign-flipped watched part), top 20% (TIES' density), "sign",
1/t. None is tuned. State: W0, the start point and the running merged delta (constant memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from harness.core.errors import ConfigError
from harness.core.precision import full_precision
from harness.math.merging import alignment_mask, alignment_penalty, running_merge
from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge

if TYPE_CHECKING:
    from harness.model.backbone import CLModel

Penalty = Literal["sign", "deviation"]


def lora_delta(model: "CLModel", name: str) -> dict[str, torch.Tensor]:
    """ΔW = B·A·scaling of adapter `name` per adapted matrix, fp32 and differentiable in A and B
    (`CLModel.delta` computes the same product detached)."""
    return {
        n: (m.lora_B[name].weight.float() @ m.lora_A[name].weight.float()) * m.scaling[name]
        for n, m in model.lora_layers().items()
    }


@dataclass
class Params:
    mu: float = 1.0  # weight μ of the alignment penalty [I]
    top_fraction: float = 0.2  # fraction of entries of |D̂| per matrix the penalty watches [I]
    penalty: Penalty = "sign"  # sign disagreement, or deviation from the merged delta [I]
    merge_weight: float | None = None  # β of the new task; None → 1/t, the running mean [I]
    start: Start = "merged"  # task t trains from the running merge [I]

    def validate(self, where: str) -> None:
        if self.mu < 0:
            raise ConfigError(f"{where}.mu: must be >= 0, got {self.mu}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"{where}.top_fraction: must be in (0, 1], got {self.top_fraction}")
        if self.merge_weight is not None and not 0.0 < self.merge_weight <= 1.0:
            raise ConfigError(f"{where}.merge_weight: must be in (0, 1] or null (1/t), got {self.merge_weight}")


@register
class PAM(TaskVectorMerge):
    name = "pam"
    description = "PAM (reconstruction): LoRA from the running merge, sign-alignment penalty to it, running-mean merge"
    Params = Params
    constant_memory = True
    reconstruction = (
        "alignment loss (masked sign/deviation penalty vs the merged delta), its weight, the start point and the "
        "merge weights are ours: the paper's loss and merge are not public and no code exists"
    )

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        self.dhat: dict[str, torch.Tensor] | None = None  # running merged delta θ̂ − W0
        self.count = 0
        self._mask: dict[str, torch.Tensor] | None = None  # derived from dhat in begin_task, not state

    def begin_task(self, model, task) -> None:
        super().begin_task(model, task)
        use = self.dhat is not None and self.params.mu > 0
        self._mask = alignment_mask(self.dhat, self.params.top_fraction) if use else None

    def task_vector(self, model, task) -> dict[str, torch.Tensor]:
        """τ_t = (start − W0) + ΔW_t, differentiable in the current LoRA."""
        start = self.start_tv or {}
        return {n: start[n].float() + d if n in start else d for n, d in lora_delta(model, self.adapter_name(task)).items()}

    def penalty(self, model, task) -> torch.Tensor:
        assert self.dhat is not None and self._mask is not None
        with full_precision(next(iter(self.dhat.values())).device):
            return alignment_penalty(self.task_vector(model, task), self.dhat, self._mask, self.params.penalty)

    def training_loss(self, model, x, y, task) -> torch.Tensor:
        loss = super().training_loss(model, x, y, task)
        if self._mask is None:
            return loss
        return loss + self.params.mu * self.penalty(model, task)

    def end_task(self, model, task, data) -> None:
        facts: dict = {}
        if self._mask is not None:
            with torch.no_grad():
                tau = self.task_vector(model, task)
                agree = sum(int(((torch.sign(tau[n]) == torch.sign(self.dhat[n])) & m).sum()) for n, m in self._mask.items())
                watched = sum(int(m.sum()) for m in self._mask.values())
                facts = {"penalty_at_end": float(self.penalty(model, task)), "sign_agreement": agree / max(watched, 1)}
        super().end_task(model, task, data)  # pops the LoRA, absorb(τ_t), writes W0 + D̂_t
        self.record.update(facts)

    def absorb(self, tau, task) -> None:
        self.count += 1
        self.dhat = running_merge(self.dhat, tau, self.count, self.params.merge_weight)
        beta = 1.0 if self.count == 1 else (self.params.merge_weight or 1.0 / self.count)
        self.record = {"merge_weight": beta}

    def merged(self):
        assert self.dhat is not None
        return self.dhat

    def acc_state(self) -> dict:
        return {"dhat": self.dhat, "count": self.count}

    def load_acc_state(self, state: dict) -> None:
        self.dhat, self.count = state["dhat"], state["count"]
