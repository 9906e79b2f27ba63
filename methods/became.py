"""BECAME — "BayEsian Continual learning with Adaptive Model mErging" (Li, Lu, Dai, Huang, Ding, Lu; ICML 2025,
arXiv 2504.02666). The authors' code is public in a fork whose README calls it the official code (ankur-bohra/BECAME,
`NSCL-based/`; also b027ffv/Original-BECAME-singlehead); its merge coefficient, Fisher estimator, labels and the
place where the Fisher is accumulated are followed here by default (read, not copied). Its experiments use
AlexNet/ResNet with GPM/Adam-NSCL projection; this LoRA/ViT adaptation is ours.

Per task t (a new LoRA on k/v from the merged weights θ*_{t−1}, a new head), two stages in one run of the loop:

1. Stability stage (the first round(gp_fraction·epochs) epochs): gradient projection, GPM-style, on the input side.
   A change ΔW of a k/v matrix leaves old-task outputs unchanged iff ΔW x = 0 for old inputs x, i.e.
   ΔW = ΔW(I − MMᵀ) with M the old tasks' input basis. With ΔW = B·A that holds for every B iff A(I − MMᵀ) = A,
   so the constraint lives on A's rows: ∂L/∂A ← (∂L/∂A)·P_free (after_backward; = Bᵀ(∂L/∂ΔW)P_free, the GPM
   projection of ΔW's gradient pushed through the factorisation) and, because AdamW's per-coordinate scaling takes
   a projected gradient out of the subspace, A ← A·P_free before every forward (projected Adam). B and the head
   are unconstrained. P_free comes from the DualGPM bases shared with InfLoRA (harness/math/subspace.py). At the end of
   the stage (end_epoch) A is projected once more and the point θ^GP_t (LoRA factors and head) is snapshotted.
2. Plasticity stage (remaining epochs): plain training from θ^GP_t to θ̂_t.
3. Merge on the segment: θ*_t = θ^GP_t + λ_t(θ̂_t − θ^GP_t), with (harness/math/became_math.py)
      λ_t = ΔᵀF_tΔ / (ΔᵀF_{1:t−1}Δ + ΔᵀF_tΔ),  Δ = θ̂_t − θ^GP_t   (the authors' `merge_n_analysis`; λ_1 = 1),
   over the effective k/v matrices; `lam_rule: derived` adds our cross term −gᵀF_{1:t−1}Δ (g = θ^GP_t − θ*_{t−1})
   from the Laplace derivation (labelled option, not the authors'). F_t is the diagonal Fisher at θ̂_t as the
   authors compute it: squared gradients of the mini-batch CE on the model's own argmax labels (current head),
   each batch weighted by its size (`fisher: batch-weighted`, harness/math/fisher.py). After the merge the Fisher
   is computed again at θ*_t and added to the accumulated one, F_{1:t} = F_{1:t−1} + F(θ*_t) (the authors'
   `update_fisher_matrix_diag`, run after the task; `accumulate: trained` adds F_t of θ̂_t instead, one pass fewer).
   The head is interpolated with the same λ (the authors' merge interpolates the whole state dict; their Fisher
   leaves the heads out, as here). Then the GPM basis is updated with the covariance of the task's k/v inputs at
   θ*_t and ε_t = lamb + (lame − lamb)·t/T.

Still reconstructed [I]: gradient projection on the LoRA factors (the authors project full weights), the Fisher space
(effective k/v weights), the GPM thresholds (lamb = 0.97, lame = 1 reproduce GPM's CIFAR schedule 0.97 + 0.003·t for
T = 10) and the 50/50 epoch split; the Fisher pass runs in eval mode (the authors' in train mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.math.became_math import became_lambda, bilinear, quad
from harness.math.fisher import empirical_fisher
from harness.math.subspace import DualGPM, input_covariances, lora_groups, threshold, validate_thresholds
from harness.method import Method, register


@dataclass
class Params:
    gp_fraction: float = 0.5  # share of each task's epochs trained with gradient projection (stage 1) [I]
    lamb: float = 0.97  # GPM energy threshold at the first task [I: GPM's CIFAR value]
    lame: float = 1.0  # threshold approached at the last task
    energy: Literal["cov", "input"] = "input"  # GPM energies: σ(C)² (InfLoRA code) or the share of E‖x‖² (GPM)
    lam_rule: Literal["code", "derived"] = "code"  # λ of the authors' code, or ours with the cross term [I]
    fisher: Literal["per-sample", "batch", "batch-weighted"] = "batch-weighted"  # the authors' estimator
    fisher_labels: Literal["predicted", "true"] = "predicted"  # CE targets of the Fisher (authors: own argmax)
    accumulate: Literal["merged", "trained"] = "merged"  # F added to F_{1:t}: at θ*_t (authors) or F_t at θ̂_t

    def validate(self, where: str) -> None:
        if self.lam_rule not in ("code", "derived"):
            raise ConfigError(f"{where}.lam_rule: must be 'code' or 'derived', got {self.lam_rule!r}")
        if not 0.0 <= self.gp_fraction <= 1.0:
            raise ConfigError(f"{where}.gp_fraction: must be in [0, 1], got {self.gp_fraction}")
        validate_thresholds(self.lamb, self.lame, self.energy, where)


@register
class BECAME(Method):
    name = "became"
    description = "BECAME: gradient-projected then free LoRA training per task, merged on the segment with a Fisher-optimal λ_t"
    Params = Params
    # GPM bases change width with T (bounded by d²/2 floats per block); the accumulated Fisher has a fixed size.
    constant_memory = False
    reconstruction = (
        "adapted to LoRA/ViT: gradient projection on LoRA's A, Fisher over the effective k/v weights, GPM thresholds "
        "and the 50/50 epoch split"
    )

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        self.gpm = DualGPM()
        self.fisher: dict[str, torch.Tensor] | None = None  # F_{1:t−1}, float32
        self.snapshot: dict | None = None  # θ^GP of the task in progress (in-task state, checkpointed per epoch)
        self._proj: dict[str, torch.Tensor] = {}  # P_free per adapted layer (empty: no constraint)

    # ---- stage 1: gradient projection ------------------------------------------------------------------------
    def gp_epochs(self) -> int:
        e = self.train_cfg.epochs
        return min(e, int(math.floor(self.params.gp_fraction * e + 0.5)))

    def in_gp_stage(self) -> bool:
        return self.snapshot is None and bool(self._proj)

    def begin_task(self, model, task) -> None:
        super().begin_task(model, task)
        self.snapshot = None
        self._proj = {}
        if self.gpm:
            for g, layers in lora_groups(model).items():
                w = model.lora_layers()[layers[0]].lora_A[self.adapter_name(task)].weight
                p = self.gpm.free_projector(g, w.shape[1], w.device).to(w.dtype)
                self._proj.update({n: p for n in layers})
        self.project_down(model, task)  # the random initial A too: ΔW x_old = 0 from the first step
        if self.gp_epochs() == 0:
            self.take_snapshot(model, task)

    @torch.no_grad()
    def project_down(self, model, task) -> None:
        """A ← A·P_free for every adapted layer (no-op without an old basis)."""
        name = self.adapter_name(task)
        for n, m in model.lora_layers().items():
            if n in self._proj:
                a = m.lora_A[name].weight
                a.copy_(a @ self._proj[n].to(a.dtype))

    def training_loss(self, model, x, y, task) -> torch.Tensor:
        if self.in_gp_stage():
            self.project_down(model, task)  # undo the off-subspace part of the last AdamW step
        return super().training_loss(model, x, y, task)

    def after_backward(self, model, task) -> None:
        if not self.in_gp_stage():
            return
        name = self.adapter_name(task)
        for n, m in model.lora_layers().items():
            g = m.lora_A[name].weight.grad
            if g is not None:
                g.copy_(g @ self._proj[n].to(g.dtype))

    def take_snapshot(self, model, task) -> None:
        name = self.adapter_name(task)
        self.snapshot = {
            "lora": {
                n: (m.lora_A[name].weight.detach().clone(), m.lora_B[name].weight.detach().clone())
                for n, m in model.lora_layers().items()
            },
            "head": {k: v.detach().clone() for k, v in model.heads.heads[-1].state_dict().items()},
        }

    def end_epoch(self, model, task, epoch: int) -> None:
        if self.snapshot is None and epoch + 1 >= self.gp_epochs():
            self.project_down(model, task)
            self.take_snapshot(model, task)

    # ---- merge ---------------------------------------------------------------------------------------------------
    def merge_fisher(self, model, task, data) -> dict[str, torch.Tensor]:
        """Diagonal Fisher at the model's current point as the authors compute it (Params `fisher`, `fisher_labels`):
        CE of the current head on its own argmax labels (or the true ones), logits / temperature as in training."""
        temp = self.train_cfg.temperature

        def loss_fn(x, y):
            logits = model.heads.heads[-1](model.features(x)).float() / temp
            target = logits.argmax(1).detach() if self.params.fisher_labels == "predicted" else y - task.offset
            return F.cross_entropy(logits, target)

        return empirical_fisher(model, data.batches(self.train_cfg.batch_size), loss_fn, self.params.fisher)

    def end_task(self, model, task, data) -> None:
        name = self.adapter_name(task)
        if self.snapshot is None:  # no epochs at all: θ^GP = θ̂
            self.take_snapshot(model, task)
        assert self.snapshot is not None
        fisher_t = self.merge_fisher(model, task, data)  # at θ̂_t
        # ΔW of θ^GP_t and θ̂_t in the weights' dtype (CLModel.delta would round float64 test models to float32)
        layers = model.lora_layers()
        d_gp = {n: (b @ a) * layers[n].scaling[name] for n, (a, b) in self.snapshot["lora"].items()}
        d_hat = {n: (m.lora_B[name].weight @ m.lora_A[name].weight).detach() * m.scaling[name] for n, m in layers.items()}
        model.drop_adapter(name)  # the merge below writes θ*_t − θ*_{t−1} itself
        delta = {n: d_hat[n] - d_gp[n] for n in d_hat}
        lam = became_lambda(delta, self.fisher, fisher_t, gp_step=d_gp if self.params.lam_rule == "derived" else None)
        model.add_to_weights({n: d_gp[n] + lam * delta[n] for n in delta})
        head = model.heads.heads[-1]
        with torch.no_grad():
            for k, v in head.state_dict().items():
                v.copy_(self.snapshot["head"][k] + lam * (v - self.snapshot["head"][k]))
        self.record = {
            "lambda": lam,
            "dFd_old": quad(self.fisher, delta) if self.fisher is not None else 0.0,
            "dFd_new": quad(fisher_t, delta),
            "gFd_old": bilinear(self.fisher, d_gp, delta) if self.fisher is not None else 0.0,
        }
        if self.params.accumulate == "merged":  # the authors: a fresh pass at θ*_t, after the merge
            fisher_t = self.merge_fisher(model, task, data)
        fisher_t = {n: f.float() for n, f in fisher_t.items()}
        self.fisher = fisher_t if self.fisher is None else {n: self.fisher[n] + fisher_t[n] for n in fisher_t}
        covs = input_covariances(model, data.batches(self.train_cfg.eval_batch_size))
        eps = threshold(task.index, len(self.ctx.stream.tasks), self.params.lamb, self.params.lame)
        self.record.update(epsilon=eps, old_input_dims=self.gpm.update(covs, eps, self.params.energy))
        self.snapshot, self._proj = None, {}

    def state_dict(self) -> dict:
        return {"gpm": self.gpm.state_dict(), "fisher": self.fisher, "snapshot": self.snapshot}

    def load_state_dict(self, state: dict) -> None:
        self.gpm.load_state_dict(state["gpm"])
        self.fisher, self.snapshot = state["fisher"], state["snapshot"]
