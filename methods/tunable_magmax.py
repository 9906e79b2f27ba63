"""Tunable MagMax: MagMax's max-|τ| merge with a per-task quota of winning entries set by a preference vector.

Hiroshima, Uchida, Shirakawa, "Tunable MagMax", ICPR 2026, arXiv 2605.20803; rule from the official code
(KeiHiroshima/tunable-magmax, research/merging-methods.md §4). Tasks are fine-tuned as in MagMax (start
"sequential": task t from θ*_{t−1}, τ_t = θ*_t − W0 cumulative). After task t, with preference weights w over the
seen tasks 1..t, every adapted k/v matrix with n entries takes exactly q_i = ⌊n·w_i⌋ (+ round-robin remainder)
entries from τ_i: MagMax's winners, with each over-quota task's excess (random, seeded) handed to the largest |τ|
among earlier tasks and the first task's overflow to the later tasks below quota (harness/math/merging.py
`tunable_magmax`). θ̂_t = W0 + λ·τ_merged, λ = 0.5 (official code, full fine-tuning of CLIP: re-tune for LoRA).

Preference weights. The paper derives w from a small *target dataset* (default metric `labels`: w_i ∝ number of
target samples whose label is one of task i's classes; alternatives compare features). This harness evaluates
class-incrementally on the test data of all seen classes and has no separate target set, so the preference source is
a hyper-parameter — a reconstruction/choice of ours, not the paper's protocol:
* "classes" (default): w_i ∝ number of classes of task i among the seen tasks — the `labels` metric on a target set
  with the seen classes equally represented;
* "test-samples": w_i ∝ number of test samples of task i — the `labels` metric with the seen test data as target
  (only label counts of the test set are used, no images);
* "uniform": w_i = 1/t;
* an explicit list, one entry per task of the stream (≥ 0; the seen prefix is renormalised; a prefix with no mass
  falls back to uniform, recorded as such).
On benchmarks with equal task sizes all three built-in sources coincide (uniform).

State: the quota assignment is not associative (it needs every τ_i at once), so every task's contribution is kept —
as its LoRA factors (A_s, B_s), not as a dense τ (≈ 1.5 MB instead of ≈ 57 MB per task on ViT-B/16 at rank 10),
growing with T (constant_memory = False; merging-methods.md §10). The dense τ_i are rebuilt for each merge, with the
same operations as when they were first formed, so the merge is bit-identical to one on stored dense vectors:
ΔW_s = (B_s·A_s)·scaling in fp32 (CLModel.delta), and τ_t = τ_{t−1} + ΔW_t = Σ_{s≤t} ΔW_s with start "sequential",
τ_t = ΔW_t with "pretrained". With start "merged" τ_t = θ̂_{t−1} − W0 + ΔW_t depends on the earlier merges, so that
(non-default) start keeps the dense start point of every task as well. The merge after task t draws from a generator
seeded by the run seed and t, so intermediate and resumed merges are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.errors import ConfigError
from harness.core.seeding import generator
from harness.math.merging import tunable_magmax
from harness.method import register
from methods._task_vectors import Start, TaskVectorMerge

SOURCES = ("classes", "test-samples", "uniform")


@dataclass
class Params:
    lam: float = 0.5  # λ of the official code (full fine-tuning)
    start: Start = "sequential"  # MagMax's protocol
    preference: str | list[float] = "classes"  # "classes" | "test-samples" | "uniform" | one weight per task [I]

    def validate(self, where: str) -> None:
        if isinstance(self.preference, str):
            if self.preference not in SOURCES:
                raise ConfigError(
                    f"{where}.preference: invalid value {self.preference!r}; valid: {', '.join(SOURCES)} "
                    "or a list of weights, one per task"
                )
        elif not self.preference or any(w < 0 for w in self.preference) or sum(self.preference) <= 0:
            raise ConfigError(f"{where}.preference: weights must be >= 0 with a positive sum, got {self.preference}")


@register
class TunableMagMax(TaskVectorMerge):
    name = "tunable-magmax"
    draws_random = True  # over-quota entries handed on at random
    description = "Tunable MagMax: max-|τ| merge with per-task quotas of winning entries from a preference vector"
    Params = Params
    constant_memory = False  # all τ_i are kept: the quota assignment needs them at once
    reconstruction = (
        "preference weights from the seen classes (default) instead of the paper's target dataset; exact-rational "
        "quotas, zero-weight tasks skipped in the remainder, first-task overflow ranked among under-quota tasks"
    )

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        pref = params.preference
        n_tasks = len(ctx.stream.tasks)
        if not isinstance(pref, str) and len(pref) != n_tasks:
            raise ConfigError(f"method_params.preference: {len(pref)} weights for a stream of {n_tasks} tasks")
        self.factors: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []  # (A_s, B_s) per task and matrix
        self.starts: list[dict[str, torch.Tensor] | None] = []  # dense start_s − W0, only with start "merged"
        self._pending: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._merged: dict[str, torch.Tensor] | None = None

    def preference_weights(self, t: int) -> tuple[list[float], str]:
        """Raw weights of tasks 0..t (normalised by the merge) and the source actually used."""
        tasks, pref = self.ctx.stream.tasks[: t + 1], self.params.preference
        if pref == "classes":
            return [float(k.num_classes) for k in tasks], pref
        if pref == "test-samples":
            w = [float(len(k.test_indices)) for k in tasks]
            return (w, pref) if sum(w) > 0 else ([1.0] * len(tasks), "uniform (no test samples)")
        if pref == "uniform":
            return [1.0] * len(tasks), pref
        w = [float(x) for x in pref[: t + 1]]
        return (w, "list") if sum(w) > 0 else ([1.0] * len(tasks), "uniform (no preference mass on the seen tasks)")

    def end_task(self, model, task, data) -> None:
        name = self.adapter_name(task)
        self._pending = {n: (m.lora_A[name].weight.detach().clone(), m.lora_B[name].weight.detach().clone())
                         for n, m in model.lora_layers().items()}
        self._scaling = model._base_scaling
        super().end_task(model, task, data)

    def task_vectors(self) -> list[dict[str, torch.Tensor]]:
        """τ_1..τ_t rebuilt from the stored factors (and starts), in the weights' dtype, exactly as first formed."""
        assert self.w0 is not None
        tvs: list[dict[str, torch.Tensor]] = []
        for s, fac in enumerate(self.factors):
            # CLModel.delta's arithmetic: (B.float() @ A.float()) · scaling
            delta = {n: (b.float() @ a.float()) * self._scaling for n, (a, b) in fac.items()}
            if self.params.start == "merged":
                start = self.starts[s]
            elif self.params.start == "sequential" and tvs:
                start = tvs[-1]
            else:
                start = None
            tvs.append({n: (start[n] + d if start is not None else d).to(self.w0[n].dtype) for n, d in delta.items()})
        return tvs

    @property
    def tvs(self) -> list[dict[str, torch.Tensor]]:
        return self.task_vectors()

    def absorb(self, tau, task) -> None:
        assert self._pending is not None
        self.factors.append(self._pending)
        self.starts.append(dict(self.start_tv) if self.params.start == "merged" and self.start_tv else None)
        self._pending = None
        tvs = self.task_vectors()
        if any(not torch.equal(tvs[-1][n], tau[n]) for n in tau):
            raise AssertionError("tunable-magmax: the task vector rebuilt from the LoRA factors differs from τ_t")
        weights, source = self.preference_weights(task.index)
        winners: dict[str, torch.Tensor] = {}
        g = generator(self.seed, "tunable-magmax", task.index)
        self._merged = tunable_magmax(tvs, weights, self.params.lam, g, winners)
        # how far the quotas moved the merge away from plain MagMax (ties → later task), for the results
        moved = total = 0
        for n, win in winners.items():
            mags = torch.stack([tv[n] for tv in tvs]).abs()
            plain = len(tvs) - 1 - mags.flip(0).argmax(0)
            moved += int((plain != win).sum())
            total += win.numel()
        s = sum(weights)
        self.record = {
            "lam": self.params.lam,
            "preference": source,
            "weights": [w / s for w in weights],
            "reassigned_fraction": moved / max(total, 1),
        }

    def merged(self):
        return self._merged

    def acc_state(self) -> dict:
        return {"factors": self.factors, "starts": self.starts, "scaling": getattr(self, "_scaling", None)}

    def load_acc_state(self, state: dict) -> None:
        self.factors, self.starts = list(state["factors"]), list(state["starts"])
        if state["scaling"] is not None:
            self._scaling = state["scaling"]
