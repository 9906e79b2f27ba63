"""TRM-recon — Trajectory Regularized Merging, a RECONSTRUCTION from the abstract of Wang & Deng, "Revitalizing the
Beginning: Avoiding Storage Dependency for Model Merging in Continual Learning" (arXiv 2605.08311, 2026). No code,
equations or hyper-parameters of the paper are public; this implements research/merging-methods.md §1.4, whose
every choice is ours (see `reconstruction` below and harness/math/trajectory_merge.py for the formulas).

Per task t:
* Train a fresh LoRA on k/v (and a new head) with CE from the previous merged model θ̂_{t−1}.
* After K evenly spaced epochs (the last = the end point) keep the LoRA factors: checkpoints θ_t^(k) (`end_epoch`).
* Merge: directions d_k = θ_t^(k) − θ̂_{t−1} (dense per adapted matrix) plus augmentation (θ̂_{t−1} − θ0 and/or a
  random direction of ‖d_K‖), merged(c) = θ̂_{t−1} + Σ_j c_{j,l} d_{j,l}, c per direction and per matrix l. c is
  optimised with Adam on the current task's data only, loss = L_align + β·L_cons + γ·L_grad (each switchable):
  CE of the current head; KL of old-class predictions to those of θ̂_{t−1}; a hinge keeping the gradient norm of a
  *probe* loss ‖∇_W L_probe‖ ≥ g0 — L_probe the CE of a fresh randomly initialised head (as the next task's head
  starts) against random labels (as the next task's labels look to the current features), both seeded; it never
  sees the current labels, so it cannot reward under-fitting the current task — with g0 = g0_ratio × its norm at
  θ̂_{t−1} on the first merge batch (the merge may not leave the next task a flatter start than θ̂_{t−1} gave).
* θ̂_t = merged(c*) is written into the weights and the LoRA dropped; task t+1 trains from θ̂_t. Heads are
  concatenated, never merged, and stay fixed during the merge.
State between tasks: θ0 of the adapted matrices (for the augmentation direction) — constant in the number of tasks;
the K checkpoints live only during the task (and in its epoch checkpoints, for a mid-task resume).
The merge runs in fp32 without autocast and with the math attention kernel (fused kernels have no double backward).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch.func import functional_call

from harness.core.errors import ConfigError
from harness.core.precision import full_precision
from harness.core.seeding import generator
from harness.math import trajectory_merge as tm
from harness.method import Method, register

Augment = Literal["previous", "random", "both", "none"]


@dataclass
class TRMParams:
    checkpoints: int = 3  # K trajectory checkpoints per task (evenly spaced epochs, the last = end point)
    augment: Augment = "previous"  # augmentation: θ̂_{t−1} − θ0, a random ‖d_K‖ direction, both, or none
    per_layer: bool = True  # one coefficient per direction and adapted matrix (else one per direction)
    init_last: float = 0.5  # initial c of the end point d_K
    init_other: float = 0.0  # initial c of every other direction
    steps: int = 0  # Adam steps on c; 0 = one pass over the task's data (≈ one epoch of batches)
    lr: float = 0.05  # Adam learning rate of c
    batch_size: int = 0  # merge batch size; 0 = train.batch_size
    align: bool = True  # L_align: CE of the current head on the current task's labels
    consistency: bool = True  # L_cons: KL of old-class predictions to those of θ̂_{t−1}
    gradient: bool = True  # L_grad: hinge keeping the probe-loss gradient norm (w.r.t. the merged k/v weights) ≥ g0
    beta: float = 1.0  # weight of L_cons
    gamma: float = 0.1  # weight of L_grad
    temperature: float = 2.0  # T of L_cons
    g0_ratio: float = 1.0  # g0 = g0_ratio × ‖∇_W L_probe‖ at θ̂_{t−1} on the first merge batch

    def validate(self, where: str) -> None:
        if self.checkpoints < 1:
            raise ConfigError(f"{where}.checkpoints: must be >= 1, got {self.checkpoints}")
        for key in ("steps", "batch_size", "beta", "gamma", "g0_ratio"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError(f"{where}: lr and temperature must be > 0, got {self.lr}, {self.temperature}")


@register
class TRM(Method):
    name = "trm"
    description = (
        "TRM (reconstruction from the abstract): merge inside the task's checkpoint-trajectory subspace, coefficients "
        "optimised for task alignment, old-class consistency and gradient responsiveness, no stored old tasks"
    )
    Params = TRMParams
    constant_memory = True
    scenarios = ("class-il",)
    scenario_note = (
        "L_cons keeps the old tasks' class predictions, and a domain-il task has no old classes (every task has all "
        "of them): the term would silently vanish there"
    )
    reconstruction = (
        "everything beyond the abstract (arXiv 2605.08311): K LoRA checkpoints at evenly spaced epochs as the "
        "trajectory; directions d_k = θ_t^(k) − θ̂_{t−1} dense per k/v matrix; augmentation θ̂_{t−1} − θ0 (or a random "
        "‖d_K‖ direction); coefficients per direction × matrix, init c_K = 0.5; Adam on c over the current task's data; "
        "L_align = CE of the current head; L_cons = T²·KL of old-class softmax to θ̂_{t−1}'s; L_grad = hinge "
        "max(0, g0 − ‖∇_W L_probe‖), L_probe = CE of a fresh random head against random labels (the next task's "
        "onset), g0 = ratio × its norm at θ̂_{t−1} (double backprop); β, γ, T, lr, steps; heads fixed, concatenated"
    )

    def __init__(self, params: TRMParams, ctx):
        super().__init__(params, ctx)
        self.w0: dict[str, torch.Tensor] | None = None  # θ0 of the adapted matrices (augmentation "previous")
        self.snapshots: list[dict] = []  # in-task: LoRA factors at the checkpoint epochs before the last

    # ---- training: keep the trajectory ------------------------------------------------------------------------
    def begin_task(self, model, task) -> None:
        if self.w0 is None and self.params.augment in ("previous", "both"):
            self.w0 = {n: w.detach().clone() for n, w in model.merged_weights().items()}
        self.snapshots = []
        super().begin_task(model, task)

    def end_epoch(self, model, task, epoch: int) -> None:
        epochs = self.train_cfg.epochs
        if epoch == epochs - 1 or epoch not in tm.checkpoint_epochs(epochs, self.params.checkpoints):
            return  # the end point is the live adapter at end_task
        name = self.adapter_name(task)
        self.snapshots.append({
            "epoch": epoch,
            "factors": {n: (m.lora_A[name].weight.detach().clone(), m.lora_B[name].weight.detach().clone(),
                            float(m.scaling[name])) for n, m in model.lora_layers().items()},
        })

    # ---- merging ----------------------------------------------------------------------------------------------
    def end_task(self, model, task, data) -> None:
        start = time.perf_counter()
        p = self.params
        name = self.adapter_name(task)
        end_point = model.pop_adapter(name)  # the model is θ̂_{t−1} again (+ the trained head)
        base = {n: w.detach().clone() for n, w in model.merged_weights().items()}
        trajectory = [{n: tm.lora_product(a, b, s).to(base[n].dtype) for n, (a, b, s) in snap["factors"].items()}
                      for snap in self.snapshots]
        trajectory.append({n: d.to(base[n].dtype) for n, d in end_point.items()})
        aug, aug_names = [], []
        if p.augment in ("previous", "both") and self.w0 is not None:
            prev = {n: base[n] - self.w0[n].to(base[n].dtype) for n in base}
            if any(float(d.abs().max()) > 0 for d in prev.values()):  # zero on the first task: no direction
                aug.append(prev)
                aug_names.append("previous")
        if p.augment in ("random", "both"):
            g = generator(self.seed, "trm-random-direction", task.index)
            aug.append({n: tm.random_like_norm(end_point[n].to(base[n].dtype), g) for n in sorted(base)})
            aug_names.append("random")
        directions = tm.stack_directions(trajectory + aug)
        coef0 = tm.init_coefficients(len(trajectory), len(aug), len(base), p.per_layer, p.init_last, p.init_other,
                                     dtype=next(iter(base.values())).dtype)
        coef, info = self._optimise(model, task, data, base, directions, coef0)
        model.set_weights({n: w.detach() for n, w in tm.combine(base, directions, coef).items()})
        labels = [f"epoch{s['epoch']}" for s in self.snapshots] + ["end"] + aug_names
        self.snapshots = []  # the trajectory is transient: nothing of task t is kept but θ̂_t
        self.record = {
            "directions": labels,
            "coef": {lab: coef[j].tolist() if coef.dim() == 2 else float(coef[j]) for j, lab in enumerate(labels)},
            "coef_mean": {lab: float(coef[j].mean()) for j, lab in enumerate(labels)},
            "layers": sorted(base),
            **info,
            "merge_seconds": time.perf_counter() - start,
        }

    def _forward_fn(self, model, probe: torch.nn.Linear | None):
        """forward(x, W) = (logits of the model whose adapted k/v matrices are W, logits of the probe head on the same
        features or None) — functional, differentiable in W."""
        backbone = model.vit.base_model.model  # what CLModel.features runs
        ids = {id(w): n for n, w in model.merged_weights().items()}
        pnames = {ids[id(prm)]: pn for pn, prm in backbone.named_parameters() if id(prm) in ids}

        def forward(x: torch.Tensor, weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
            feats = functional_call(backbone, {pnames[n]: w for n, w in weights.items()}, (x,))
            return model.heads(feats), (probe(feats) if probe is not None else None)

        return forward

    def probe_head(self, model, task) -> torch.nn.Linear:
        """The fresh head of L_probe: initialised like a new task head (CLModel.heads.add), seeded by (run, task),
        as wide as the current task's head, frozen."""
        from harness.core.seeding import seeded

        ref = model.heads.heads[-1]
        with seeded(self.task_seed("trm-probe-head", task.index)):
            head = torch.nn.Linear(ref.in_features, ref.out_features)
        return head.to(ref.weight.device, ref.weight.dtype).requires_grad_(False)

    def _optimise(self, model, task, data, base, directions, coef0) -> tuple[torch.Tensor, dict]:
        p = self.params
        bs = p.batch_size or self.train_cfg.batch_size
        steps = p.steps or math.ceil(len(data) / bs)
        n_old = task.offset
        coef = coef0.clone().to(next(iter(base.values())).device).requires_grad_(True)
        info: dict = {"steps": steps, "g0": None, "first": None, "last": None}
        if not (p.align or p.consistency or p.gradient) or steps == 0:
            return coef.detach(), info
        opt = torch.optim.Adam([coef], lr=p.lr)
        n_probe = task.num_classes
        forward = self._forward_fn(model, self.probe_head(model, task) if p.gradient else None)
        g = generator(self.seed, "trm-merge-batches", task.index)
        g_probe = generator(self.seed, "trm-probe-labels", task.index)
        was_training = model.training
        model.eval()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        try:
            with sdpa_kernel([SDPBackend.MATH]), full_precision(coef.device):
                batches = iter(())
                g0 = 0.0
                for step in range(steps):
                    try:
                        x, y = next(batches)
                    except StopIteration:  # a new pass over the data, in a new seeded order
                        batches = iter(data.batches(bs, g))
                        x, y = next(batches)
                    y_local = y - task.offset
                    probe_y = torch.randint(n_probe, y.shape, generator=g_probe).to(y.device) if p.gradient else None
                    prev_old = None
                    if n_old > 0 or (p.gradient and step == 0):
                        base_w = {n: w.detach().requires_grad_(p.gradient and step == 0) for n, w in base.items()}
                        with torch.set_grad_enabled(p.gradient and step == 0):
                            z0, probe0 = forward(x, base_w)
                        prev_old = z0[:, :n_old].detach()
                        if p.gradient and step == 0:  # g0 from the start point θ̂_{t−1} (c = 0)
                            l0 = tm.probe_loss(probe0, probe_y, self.train_cfg.temperature)
                            g0 = p.g0_ratio * float(tm.grad_norm_wrt(l0, base_w, create_graph=False))
                            info["g0"] = g0
                    loss, terms = tm.trm_objective(
                        lambda w: forward(x, w), base, directions, coef, y_local, prev_old, n_old=n_old,
                        align=p.align, consistency=p.consistency, gradient=p.gradient, beta=p.beta, gamma=p.gamma,
                        temperature=p.temperature, ce_temperature=self.train_cfg.temperature, g0=g0,
                        probe_labels=probe_y,
                    )
                    if not math.isfinite(terms["total"]):
                        raise FloatingPointError(f"trm: merge loss is {terms['total']} at task {task.index}, step {step}")
                    (grad,) = torch.autograd.grad(loss, [coef], allow_unused=True)
                    coef.grad = torch.zeros_like(coef) if grad is None else grad
                    opt.step()
                    info["first"] = info["first"] or terms
                    info["last"] = terms
        finally:
            model.train(was_training)
        return coef.detach(), info

    # ---- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"w0": self.w0, "snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        self.w0, self.snapshots = state["w0"], list(state["snapshots"])
