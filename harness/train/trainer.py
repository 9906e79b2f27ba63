"""The shared continual-learning loop: per task, the method's hooks around epochs of training, then evaluation of
the method's evaluation model on the test data of every task seen so far.

The loop owns the optimiser (AdamW, separate LoRA and head learning rates), the schedule, bf16 autocast on CUDA,
torch.compile of the training forward on CUDA (`ExecConfig.compile`, harness/train/compile.py), the NaN guard, evaluation
and when checkpoints are written. The step loop (`run_epoch`) never waits for the device: the NaN guard and
the gradient norms stay on it and are read once per epoch (`EpochWatch`), and the next batch can be prepared on a
background thread while a step runs (`ExecConfig.prefetch`, harness/data/prefetch.py). Randomness comes only from generators derived from the run config, and
every piece of state is checkpointed, so a resumed run gives the same numbers as an uninterrupted one (bit-exact on
CPU). The checkpoints (after every task and every epoch) are harness/train/checkpoints.py's; the run's inputs are built by
harness/train/setup.py.

Diagnostic (every method): the L2 norm of the gradient the optimiser applies (after `after_backward`) over the first
GRAD_NORM_STEPS steps of every task, over all trainable parameters ("all") and over those outside the heads
("backbone": the LoRA), in `RunState.grad_norms` → result.json. It shows whether training stalls at the start of a
task that begins from a merged model (the "vanishing gradient at the onset of the next task" of TRM,
research/merging-methods.md §1.2) and whether a method cures it. Not part of the run's identity: it changes no result.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from harness.config import ExecConfig, RunConfig
from harness.core.errors import TrainingDiverged
from harness.core.io import BackgroundWriter
from harness.core.precision import autocast
from harness.core.seeding import generator
from harness.data.image_bank import ImageBank
from harness.data.prefetch import Prefetcher
from harness.data.stream import Task, TaskStream
from harness.method.base import Method, TaskData
from harness.model.backbone import CLModel
from harness.train.checkpoints import (
    epoch_checkpoint_path,
    load_checkpoint,
    load_epoch_checkpoint,
    restore_rngs,
    save_checkpoint,
    save_epoch_checkpoint,
)
from harness.train.setup import RunState, Setup

GRAD_NORM_STEPS = 20  # steps at the start of each task whose gradient norm is recorded


def make_optimizer(method: Method, model: CLModel, task: Task, train_cfg) -> torch.optim.Optimizer:
    """AdamW over the method's parameter groups (their own learning rates) with the run's weight decay. foreach: one
    kernel per op over all parameters (bit-identical to the per-tensor loop, faster on CPU)."""
    return torch.optim.AdamW(method.parameter_groups(model, task), weight_decay=train_cfg.weight_decay, foreach=True)


def make_scheduler(opt: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@torch.no_grad()
def evaluate(model: CLModel, bank: ImageBank, stream: TaskStream, t: int, batch_size: int) -> tuple[list[float], list[float]]:
    """Accuracy on each seen task j ≤ t: class-incremental (argmax over all seen classes) and task-aware (domain-il:
    argmax over all classes, and task-aware is the same number since every task spans all classes). The correct
    counts stay on the device and are read once, after the last batch (one sync per evaluation, not one per batch)."""
    seen = stream.seen_classes(t)
    if model.heads.num_classes != seen:
        raise RuntimeError(f"evaluation model has {model.heads.num_classes} outputs after task {t}, expected {seen}")
    was_training = model.training
    model.eval()
    counts = []  # per task: [correct, correct task-aware] on the device
    for task in stream.tasks[: t + 1]:
        correct = torch.zeros(2, dtype=torch.long, device=bank.device)
        lo, hi = task.offset, task.offset + task.num_classes
        for x, y in bank.iterate(task.test_indices, batch_size):
            with autocast(bank.device):
                logits = model(x).float()
            correct += torch.stack([(logits.argmax(1) == y).sum(), (logits[:, lo:hi].argmax(1) + lo == y).sum()])
        counts.append(correct)
    model.train(was_training)
    cil, ta = [], []
    for task, (c, c_ta) in zip(stream.tasks, torch.stack(counts).tolist()):
        n = max(len(task.test_indices), 1)
        cil.append(c / n)
        ta.append(c_ta / n)
    return cil, ta


def train_task(
    s: Setup, task: Task, progress: Callable[[], None], epoch_ckpt: Path | None = None,
    log: Callable[[str], None] = lambda _: None, writer: BackgroundWriter | None = None,
) -> dict[str, list[float]]:
    """begin_task, the epochs (resuming after the last epoch saved in `epoch_ckpt`, saving it after each, through
    `writer` when given), end_task. Returns the gradient norms of the task's first GRAD_NORM_STEPS steps
    ({"all": [...], "backbone": [...]})."""
    cfg, model, method = s.cfg, s.model, s.method
    method.begin_task(model, task)
    saved = load_epoch_checkpoint(epoch_ckpt, s, task) if epoch_ckpt is not None and epoch_ckpt.exists() else None
    opt = make_optimizer(method, model, task, cfg.train)
    sched = make_scheduler(opt, cfg.train)
    indices = method.train_indices(task)
    g = generator(cfg.seed, "batches", task.index)
    first = 0
    norms: dict[str, list[float]] = {"all": [], "backbone": []}
    if saved is not None:  # after the model and method: the optimiser state refers to the restored parameters
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        restore_rngs(saved, s.method, g)
        first = saved["epochs_done"]
        norms = saved.get("grad_norms", norms)
        log(f"resumed at task {task.index}, epoch {first} of {cfg.train.epochs} (from {epoch_ckpt.name})")
    model.train()
    heads = {id(p) for p in model.heads.parameters()}
    for epoch in range(first, cfg.train.epochs):
        passes = (  # `epoch_repeats` passes per epoch; augmentation seeded per (task, epoch, pass, batch)
            batch
            for r in range(cfg.train.epoch_repeats)
            for batch in s.train_bank.iterate(indices, cfg.train.batch_size, g, augment=(cfg.seed, "augment", task.index, epoch, r))
        )
        if s.prefetch:  # one epoch at a time: the batch-order generator is never drawn past the epoch's end
            passes = Prefetcher(passes, s.device)
        watch = EpochWatch(norm_steps=GRAD_NORM_STEPS - len(norms["all"]))
        with model.compiled(cfg.train.batch_size):  # full batches compiled (if on), the partial last one eager
            run_epoch(s, task, opt, passes, watch, heads)
        watch.check(cfg, task.index, epoch, norms)  # the epoch's one device→host sync
        sched.step()
        method.end_epoch(model, task, epoch)
        if epoch_ckpt is not None:
            save_epoch_checkpoint(epoch_ckpt, s, task, epoch + 1, opt, sched, g, norms, writer)
        progress()
    method.end_task(model, task, TaskData(s.train_bank, indices))
    return norms


@dataclass
class EpochWatch:
    """What the step loop records without synchronising with the device: each step's loss and, for the first
    `norm_steps` steps, the gradient norms, as device tensors. `check` reads them once, at the end of the epoch."""

    norm_steps: int
    losses: list[torch.Tensor] = field(default_factory=list)
    grad_norms: list[torch.Tensor] = field(default_factory=list)  # per step: [‖g‖ all, ‖g‖ backbone]

    def check(self, cfg: RunConfig, task: int, epoch: int, norms: dict[str, list[float]]) -> None:
        """Raise TrainingDiverged at the first non-finite loss of the epoch; append the gradient norms to `norms`."""
        if self.losses:
            losses = torch.stack(self.losses)
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                step = int(bad[0, 0])
                raise TrainingDiverged(
                    f"{cfg.method} on {cfg.benchmark} (seed {cfg.seed}): loss is {losses[step].item()} at task {task}, "
                    f"epoch {epoch}, step {step}; no result recorded. Lower the learning rates or check the data."
                )
        for pair in torch.stack(self.grad_norms).tolist() if self.grad_norms else []:
            norms["all"].append(pair[0])
            norms["backbone"].append(pair[1])


def run_epoch(s: Setup, task: Task, opt: torch.optim.Optimizer, batches, watch: EpochWatch, heads: set[int]) -> None:
    """The step loop of one epoch. It never waits for the device (no .item(), bool(tensor), blocking copy or tensor
    built from Python data: tests/test_gpu_path.py counts them); divergence and the gradient norms go to `watch`."""
    model, method = s.model, s.method
    for x, y in batches:
        with autocast(s.device):
            loss = method.training_loss(model, x, y, task)
        watch.losses.append(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(model, task)
        if len(watch.grad_norms) < watch.norm_steps:
            watch.grad_norms.append(_grad_norms(opt, heads))
        opt.step()
        s.tracker.step(task.index, loss, opt)  # a no-op unless --log is given (reading the loss syncs)


@torch.no_grad()
def _grad_norms(opt: torch.optim.Optimizer, heads: set[int]) -> torch.Tensor:
    """[‖g‖₂ over all optimised parameters, over those outside the heads (ids in `heads`)], on the device."""
    sq_all, sq_backbone = [], []
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                sq = p.grad.detach().float().square().sum()
                sq_all.append(sq)
                if id(p) not in heads:
                    sq_backbone.append(sq)
    device = opt.param_groups[0]["params"][0].device
    return torch.stack([torch.stack(sq).sum().sqrt() if sq else torch.zeros((), device=device) for sq in (sq_all, sq_backbone)])


def run_tasks(
    s: Setup,
    exec_cfg: ExecConfig,
    checkpoint: Path | None = None,
    stop_after: int | None = None,
    state: RunState | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> RunState:
    """Train and evaluate every task, resuming from `checkpoint` (and its epoch checkpoint) if it exists; save it
    after each task and the epoch checkpoint after each epoch.

    `stop_after` ends the loop once that many tasks are done; passing the returned `state` back continues the same
    in-memory run (used by tests to inspect a run between tasks and to check resume equivalence). `log` hears where
    a run resumed.
    """
    from tqdm.auto import tqdm

    if state is None:
        state = load_checkpoint(checkpoint, s) if checkpoint and checkpoint.exists() else RunState()
        if state.tasks_done:
            log(f"resumed after task {state.tasks_done - 1} (from {checkpoint.name})")
    T = len(s.stream.tasks)
    bar = tqdm(
        total=T * s.cfg.train.epochs,
        initial=state.tasks_done * s.cfg.train.epochs,
        desc=f"{s.cfg.method}/{s.cfg.benchmark}/seed{s.cfg.seed}",
        disable=None if exec_cfg.progress else True,  # None: quiet when stderr is not a TTY
        unit="epoch",
    )
    # epoch checkpoints written on a background thread (ExecConfig.background_checkpoints); every write is waited
    # for before the task checkpoint supersedes it and before this function returns or raises
    with bar, BackgroundWriter(exec_cfg.background_checkpoints) as writer:
        for task in s.stream.tasks[state.tasks_done :]:
            if stop_after is not None and state.tasks_done >= stop_after:
                break
            start = time.perf_counter()
            epoch_ckpt = epoch_checkpoint_path(checkpoint) if checkpoint is not None else None
            norms = train_task(s, task, progress=lambda: bar.update(1), epoch_ckpt=epoch_ckpt, log=log, writer=writer)
            cil, ta = evaluate(s.method.eval_model(s.model), s.test_bank, s.stream, task.index, s.cfg.train.eval_batch_size)
            if any(math.isnan(v) for v in cil):
                raise TrainingDiverged(f"task {task.index}: accuracy is NaN")
            state.acc.append(cil)
            if s.val_stream is not None:  # same evaluation model, held-out training samples
                state.val_acc.append(evaluate(s.method.eval_model(s.model), s.train_bank, s.val_stream, task.index,
                                              s.cfg.train.eval_batch_size)[0])
            if s.stream.scenario == "class-il":  # domain-il: one head, task-aware accuracy is the accuracy itself
                state.task_aware.append(ta)
            state.task_seconds.append(time.perf_counter() - start)
            state.method_records.append(s.method.task_record(task))
            state.grad_norms.append(norms)
            n = [len(t.test_indices) for t in s.stream.tasks[: task.index + 1]]
            a_t = sum(c * k for c, k in zip(cil, n)) / sum(n)
            bar.set_postfix(task=f"{task.index + 1}/{T}", acc=f"{a_t:.3f}")
            s.tracker.task_end(task.index, cil, a_t, state.method_records[-1], norms,
                               state.val_acc[-1] if s.val_stream is not None else None)
            if checkpoint is not None:
                writer.wait()  # the task's last epoch checkpoint is on disk before it is superseded and removed
                save_checkpoint(checkpoint, s, state)
                epoch_checkpoint_path(checkpoint).unlink(missing_ok=True)  # superseded by the task checkpoint
    return state
