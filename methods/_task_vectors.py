"""Shared base of the merges of task vectors τ_t = θ*_t − W0 (avg, task-arith, dare, ties, magmax).

Task vectors are dense per adapted k/v matrix, relative to the pretrained weights W0 (the literature's definition):
τ_t = (start_t − W0) + ΔW_t with ΔW_t = B_t·A_t·scaling the task's LoRA product. After each task the merged model
is θ̂_t = W0 + merge(τ_1..τ_t); evaluation always uses θ̂_t and the concatenated heads (never merged).

Where task t's training starts (`start`) varies in the literature, so it is a hyper-parameter:
* "merged": from θ̂_{t−1}, the current merged model — P&M's protocol, used for its baseline rows (model averaging,
  DARE), research/pm-spec.md §1, merging-methods.md §2.
* "sequential": from θ*_{t−1}, the previous task's fine-tuned end point, not the merge — MagMax's protocol (its code
  fine-tunes sequentially and merges the cumulative τ_t), merging-methods.md §3.
* "pretrained": from W0 every task (independent fine-tuning) — the multi-task merging setting of task arithmetic,
  TIES and DARE; merging-methods.md §8.2.

All merges here have online forms (running sums, a running max-|τ|, TIES' signed sums), so the state — W0, the
start point and the accumulators — does not grow with the number of tasks.
"""

from __future__ import annotations

from typing import Literal

import torch

from harness.core.errors import ConfigError
from harness.math.merging import TRIM_COUNTS
from harness.method import Method

Start = Literal["merged", "sequential", "pretrained"]
Tensors = dict[str, torch.Tensor]


def check_trim(where: str, density: float, count: str) -> None:
    """The TIES trim's parameters (ties, dare-ties, ties-pairwise): density in (0, 1], a known kept-entry count."""
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"{where}.density: must be in (0, 1], got {density}")
    if count not in TRIM_COUNTS:
        raise ConfigError(f"{where}.count: must be one of {', '.join(TRIM_COUNTS)}, got {count!r}")


class TaskVectorMerge(Method):
    """Subclasses implement `absorb(tau, task)` (update accumulators) and `merged()` (the merged τ, relative to W0);
    their Params must have a `start` field. Accumulator state goes in `acc_state`/`load_acc_state`."""

    constant_memory = True

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.w0: Tensors | None = None  # pretrained weights of the adapted matrices
        self.start_tv: Tensors | None = None  # start point of the next task, relative to W0 (None: W0)

    # ---- to implement --------------------------------------------------------------------------------------
    def task_delta(self, delta: Tensors, task) -> Tensors:
        """The task's own fine-tuning delta ΔW_t as it enters τ_t = (start_t − W0) + ΔW_t. Default: unchanged (DARE
        drops and rescales it here, so earlier tasks' merged entries in start_t are never re-dropped)."""
        return delta

    def absorb(self, tau: Tensors, task) -> None:
        raise NotImplementedError

    def merged(self) -> Tensors:
        raise NotImplementedError

    def acc_state(self) -> dict:
        raise NotImplementedError

    def load_acc_state(self, state: dict) -> None:
        raise NotImplementedError

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def begin_task(self, model, task) -> None:
        if self.w0 is None:
            self.w0 = {n: w.detach().clone() for n, w in model.merged_weights().items()}
        super().begin_task(model, task)
        start = self.start_tv or {}
        model.set_weights({n: w + start[n] if n in start else w for n, w in self.w0.items()})

    def end_task(self, model, task, data) -> None:
        assert self.w0 is not None
        delta = self.task_delta(model.pop_adapter(self.adapter_name(task)), task)
        start = self.start_tv or {}
        # τ in the weights' dtype, so accumulators match the model's precision
        tau = {n: (start[n] + d if n in start else d).to(self.w0[n].dtype) for n, d in delta.items()}
        self.absorb(tau, task)
        merged = self.merged()
        model.set_weights({n: self.w0[n] + merged[n].to(self.w0[n].dtype) for n in self.w0})
        mode = self.params.start
        self.start_tv = merged if mode == "merged" else tau if mode == "sequential" else None

    def state_dict(self) -> dict:
        return {"w0": self.w0, "start_tv": self.start_tv, "acc": self.acc_state()}

    def load_state_dict(self, state: dict) -> None:
        self.w0, self.start_tv = state["w0"], state["start_tv"]
        self.load_acc_state(state["acc"])


def add(acc: Tensors | None, tv: Tensors) -> Tensors:
    """Running sum of task vectors."""
    return dict(tv) if acc is None else {n: acc[n] + tv[n] for n in tv}
