"""InfLoRA — "Interference-Free Low-Rank Adaptation for Continual Learning" (Liang & Li, CVPR 2024, arXiv
2404.00228; code github.com/liangyanshuo/InfLoRA). Specification: research/merging-methods.md §7.

Per task t (a new LoRA on k and v, a new head):

1. One pass of the task's training data through the current model θ*_{t−1} (eval mode, no gradient) gives, per
   block, the uncentred covariance C = E[x xᵀ] of the tokens entering the k/v projections (harness/math/subspace.py).
2. The down-projection A_t (rank × d), shared by k and v of a block, is designed and frozen:
   A_t = top-r left singular vectors of C' = P_free·C, as rows, / √3 [code], where P_free projects onto the
   complement of the old tasks' input space (DualGPM basis: I − MMᵀ for 'remove', MMᵀ for 'retain'). Then
   ΔW_t x = B_t A_t x ≈ 0 for old-task inputs x: "interference-free" without gradient projection.
3. Only B_t (init 0) and the current head are trained (CE of the current head on local labels).
4. The branch is folded into the weights (InfLoRA sums all branches, so folding is exact), then a second pass
   computes C on the trained model and the DualGPM basis is updated with the energy threshold
   ε_t = lamb + (lame − lamb)·t/T (GPM criterion; 'remove' → 'retain' once the basis exceeds d/2).

Harness adaptations and deviations (documented, not reconstructions: the code is public):
* Optimiser: the shared loop's AdamW (lr_lora for B, lr_head, the run's schedule and weight decay); the reference
  uses Adam lr 5e-4, wd 0, cosine, batch 128, 20 epochs (CIFAR-100) / 50 (ImageNet-R) — set those in the run
  config to match. The reference trains in eval mode; the ViT presets here have no dropout/drop-path (all p = 0),
  so the loop's train mode computes the same function.
* Data for step 1: `begin_task` receives no data in the harness API, so the method iterates the task's training
  indices over the run's training bank (`Method.task_data`, the evaluation view of the training images).
* DualGPM: the first task uses the same minimal-r energy rule as later tasks (the code keeps one direction fewer
  there) and stores a first basis wider than d/2 as its complement (the code tags U[:, :r] itself 'retain').
* Energy criterion (`energy`): the default "input" counts the share of old inputs' energy E‖x‖² captured by the
  basis (GPM's criterion on the activation matrix, which the paper cites). The InfLoRA code passes the covariance C
  to DualGPM and squares its singular values (energies λ_i²), which keeps far fewer directions: on the split-digits
  micro ViT after task 0, 2 of 32 per block at ε = 0.95 (vs 5 with "input"), and task 1 then moved the k/v outputs
  on task-0 inputs 1.4–1.7× *more* than sequential LoRA (vs 0.65–0.8× with "input"; tests/
  test_methods_inflora_became.py). `energy: cov` reproduces the code's rule for comparisons with its logs.
* One covariance/basis per block serves k and v (they read the same tokens; the code keeps one per block too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from harness.math.subspace import (
    DualGPM,
    input_covariances,
    inflora_down,
    lora_groups,
    old_projector,
    threshold,
    validate_thresholds,
)
from harness.method import Method, register


@dataclass
class Params:
    lamb: float = 0.95  # ε at the first task [code: CIFAR-100 0.95, ImageNet-R 0.98]
    lame: float = 1.0  # ε approached at the last task [code]
    energy: Literal["cov", "input"] = "input"  # GPM energies: share of E‖x‖² (GPM, default) or σ(C)² (InfLoRA code)

    def validate(self, where: str) -> None:
        validate_thresholds(self.lamb, self.lame, self.energy, where)


@register
class InfLoRA(Method):
    name = "inflora"
    description = "InfLoRA: per-task k/v LoRA whose frozen A lies outside the old tasks' input subspace (DualGPM); B trained, folded"
    Params = Params
    # The DualGPM bases change width from task to task (a 'remove' basis grows with T until it passes d/2, then its
    # shrinking complement is stored): bounded by d²/2 floats per block whatever T, but not a fixed size.
    constant_memory = False

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        self.gpm = DualGPM()
        self._a_overlap = 0.0

    def _task_batches(self, task) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.task_data(task).batches(self.train_cfg.eval_batch_size)

    def design_down(self, model, covs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A per adapted layer (shared by the k and v of a block) from each block's input covariance."""
        rank, down, overlap = model.cfg.lora_rank, {}, 0.0
        for g, layers in lora_groups(model).items():
            c = covs[g]
            basis = self.gpm.bases.get(g, torch.zeros(c.shape[0], 0, dtype=torch.float64, device=c.device))
            kind = self.gpm.kinds.get(g, "remove")
            a = inflora_down(c, basis, kind, rank)
            # diagnostic: share of A's rows in the old input space (0 by construction)
            overlap = max(overlap, float((a @ old_projector(basis, kind)).norm() / a.norm().clamp(min=1e-30)))
            for n in layers:
                down[n] = a
        self._a_overlap = overlap
        return down

    def begin_task(self, model, task) -> None:
        super().begin_task(model, task)  # head + adapter (B = 0: the pass below sees θ*_{t−1})
        covs = input_covariances(model, self._task_batches(task))
        model.set_adapter_down(self.adapter_name(task), self.design_down(model, covs))
        model.adapter_up_parameters(self.adapter_name(task))  # freezes A: no gradient is computed for it

    def parameter_groups(self, model, task) -> list[dict]:
        # called after a mid-task resume too, which re-creates the adapter: freezes A again
        groups = [{"params": model.adapter_up_parameters(self.adapter_name(task)), "lr": self.train_cfg.lr_lora,
                   "name": "lora"}]
        groups.append({"params": list(model.heads.heads[-1].parameters()), "lr": self.train_cfg.lr_head, "name": "head"})
        return groups

    def end_task(self, model, task, data) -> None:
        model.fold_adapter(self.adapter_name(task), 1.0)  # exact: InfLoRA sums its branches
        covs = input_covariances(model, data.batches(self.train_cfg.eval_batch_size))
        eps = threshold(task.index, len(self.ctx.stream.tasks), self.params.lamb, self.params.lame)
        dims = self.gpm.update(covs, eps, self.params.energy)
        self.record = {"epsilon": eps, "old_input_dims": dims, "a_old_overlap": self._a_overlap}

    def state_dict(self) -> dict:
        return {"gpm": self.gpm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.gpm.load_state_dict(state["gpm"])
