"""The method API: a method is a small class with lifecycle hooks; the shared trainer owns the loop.

Lifecycle per task t (see harness/train/trainer.py):
    begin_task(model, task)          – new head, new LoRA adapter (default), method bookkeeping
    parameter_groups(model)          – what the optimiser trains (default: current LoRA @ lr_lora, head @ lr_head)
    training_loss(model, x, y, task) – loss of one mini-batch (default: CE of the current head on local labels)
    after_backward(model, task)      – gradients are in .grad, before the optimiser step (e.g. gradient projection)
    end_epoch(model, task, epoch)    – after each epoch's scheduler step (e.g. switch training stage, snapshot)
    end_task(model, task, data)      – where merging happens: fold (a part of) the task's LoRA into the weights
    eval_model(model)                – the model evaluated on every seen task (default: the model itself)
Methods keep their between-task state in `state_dict()` so a run resumes after any task. A run also resumes in the
middle of a task (from its last epoch): the trainer then calls `begin_task` again on the restored between-task
state, restores the model, `state_dict()` and the optimiser as they were after that epoch, and finally
`load_rng_state(rng_state())` — the states of the method's own generators (default: every `torch.Generator`
attribute). A method that keeps other in-task state which `begin_task` resets (e.g. counters of random draws) adds
it by overriding `rng_state`/`load_rng_state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.seeding import cpu_byte_state, derive_seed

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.data.image_bank import ImageBank
    from harness.data.stream import Task, TaskStream
    from harness.model.backbone import CLModel


@dataclass
class NoParams:
    """A method without hyper-parameters."""


@dataclass
class MethodContext:
    config: "RunConfig"
    stream: "TaskStream"
    device: torch.device
    train_bank: "ImageBank | None" = None  # the run's training images, set by the trainer once built


@dataclass
class TaskData:
    """A task's training samples as preprocessed batches, for hooks that need a pass over the data (e.g. Fisher)."""

    bank: "ImageBank"
    indices: np.ndarray

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.bank.iterate(self.indices, batch_size, generator)

    def __len__(self) -> int:
        return len(self.indices)


class Method:
    """Base class. Subclasses set `name`, `description`, optionally `Params` (a dataclass with defaults) and
    override the hooks they need. Register with `@harness.method.registry.register`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    constant_memory: ClassVar[bool] = True  # between-task state does not grow with the number of tasks
    reconstruction: ClassVar[str | None] = None  # what is reconstructed, for methods without public code
    # False: `state_dict()` changes only in begin_task/end_task, so epoch checkpoints leave it out (a resume replays
    # begin_task on the task checkpoint's state) — P&M's float64 sums are then written once per task, not per epoch
    state_changes_in_task: ClassVar[bool] = True
    # the scenarios the method's formulation applies to (harness/data/spec.py SCENARIOS); a grid or run asking for
    # another is refused with `scenario_note`, which says why
    scenarios: ClassVar[tuple[str, ...]] = ("class-il", "domain-il")
    scenario_note: ClassVar[str] = ""

    def __init__(self, params: Any, ctx: MethodContext):
        self.params = params
        self.ctx = ctx
        self.train_cfg = ctx.config.train
        self.seed = ctx.config.seed
        self.record: dict = {}  # facts about the last finished task (e.g. α_t), stored in the run's results

    # ---- helpers ---------------------------------------------------------------------------------------------
    def task_seed(self, *parts: object) -> int:
        """A seed for this run's randomness named by `parts` (e.g. 'lora', t)."""
        return derive_seed(self.seed, *parts)

    def task_data(self, task: "Task") -> TaskData:
        """The task's training samples (evaluation view, no augmentation), e.g. for a pass before training."""
        if self.ctx.train_bank is None:
            raise RuntimeError(f"{self.name}: the trainer has not attached the training data to the method context")
        return TaskData(self.ctx.train_bank, self.train_indices(task))

    @staticmethod
    def adapter_name(task: "Task") -> str:
        return f"task{task.index}"

    # ---- lifecycle hooks ---------------------------------------------------------------------------------------
    def begin_task(self, model: "CLModel", task: "Task") -> None:
        model.heads.add(task.num_classes, seed=self.task_seed("head", task.index))
        model.add_adapter(self.adapter_name(task), seed=self.task_seed("lora", task.index))

    def train_indices(self, task: "Task") -> np.ndarray:
        return task.train_indices

    def parameter_groups(self, model: "CLModel", task: "Task") -> list[dict]:
        groups = [{"params": model.adapter_parameters(self.adapter_name(task)), "lr": self.train_cfg.lr_lora}]
        groups.append({"params": list(model.heads.heads[-1].parameters()), "lr": self.train_cfg.lr_head})
        return groups

    def training_loss(self, model: "CLModel", x: torch.Tensor, y: torch.Tensor, task: "Task") -> torch.Tensor:
        """CE of the current task's head on local labels, logits divided by the temperature."""
        logits = model.heads.heads[-1](model.features(x))
        return F.cross_entropy(logits.float() / self.train_cfg.temperature, y - task.offset)

    def after_backward(self, model: "CLModel", task: "Task") -> None:
        """Called after `loss.backward()` and before `optimizer.step()`; may modify `.grad` in place. Default: nothing."""

    def end_epoch(self, model: "CLModel", task: "Task", epoch: int) -> None:
        """Called after epoch `epoch` (0-based) of the task, before the epoch checkpoint is written, so state it
        changes must be in `state_dict()` or `rng_state()` to survive a resume. Default: nothing."""

    def end_task(self, model: "CLModel", task: "Task", data: TaskData) -> None:
        raise NotImplementedError

    def fisher_estimator(self) -> str:
        """The Fisher estimator of harness/math/fisher.py: the method's `fisher` parameter if it has one, else per-sample."""
        return getattr(self.params, "fisher", "per-sample")

    def task_fisher(self, model: "CLModel", task: "Task", data: TaskData) -> dict[str, torch.Tensor]:
        """Diagonal empirical Fisher (harness/math/fisher.py, estimator `fisher_estimator()`) at the current point over one
        pass of the task's data, of the base loss: CE of the current head on local labels — never a subclass's
        perturbed or regularised loss."""
        from harness.math.fisher import empirical_fisher

        return empirical_fisher(
            model,
            data.batches(self.train_cfg.batch_size),
            lambda x, y: Method.training_loss(self, model, x, y, task),
            self.fisher_estimator(),
        )

    def eval_model(self, model: "CLModel") -> "CLModel":
        return model

    # ---- state and records -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Between-task state (tensors and plain data). Default: none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name}: unexpected state keys {list(state)}")

    def rng_state(self) -> dict:
        """In-task randomness to checkpoint after every epoch: the state of each `torch.Generator` attribute (e.g. a
        perturbation sampler made in `begin_task`). Override (calling super) to add state that advances with it."""
        return {k: v.get_state() for k, v in vars(self).items() if isinstance(v, torch.Generator)}

    def load_rng_state(self, state: dict) -> None:
        """Restore `rng_state()` on a mid-task resume (called after `begin_task` has recreated the generators). States
        are moved to the CPU first: a checkpoint loaded with a GPU `map_location` holds them on the GPU."""
        for k, v in state.items():
            g = getattr(self, k, None)
            if not isinstance(g, torch.Generator):
                raise ValueError(f"{self.name}: rng state {k!r} has no generator attribute to restore into")
            g.set_state(cpu_byte_state(v))

    def task_record(self, task: "Task") -> dict:
        """Per-task facts stored in the run's results (e.g. merge coefficients): what `end_task` put in `record`."""
        return self.record
