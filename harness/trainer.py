"""The shared continual-learning loop: per task, the method's hooks around epochs of training, then evaluation of
the method's evaluation model on the test data of every task seen so far.

The loop owns the optimiser (AdamW, separate LoRA and head learning rates), the schedule, bf16 autocast on CUDA,
the NaN guard, evaluation and checkpoints. The step loop (`run_epoch`) never waits for the device: the NaN guard and
the gradient norms stay on it and are read once per epoch (`EpochWatch`), and the next batch can be prepared on a
background thread while a step runs (`ExecConfig.prefetch`, harness/prefetch.py). Randomness comes only from generators derived from the run config, and
every piece of state is checkpointed, so a resumed run gives the same numbers as an uninterrupted one (bit-exact on
CPU). Two checkpoint files, each written atomically:

    checkpoint.pt        after every task: model trainable state, method state, RunState
    checkpoint.epoch.pt  after every epoch of the task in progress: the model, method state and method generators,
                         optimiser, scheduler, batch-order generator, torch's global RNG and the gradient norms
                         recorded so far in the task, as they are after that epoch. Resuming replays the task's
                         `begin_task` on the state of checkpoint.pt, then loads this; it is ignored once
                         checkpoint.pt has moved past its task.

A run killed at any point (time limit, preemption, scancel, OOM) thus loses at most one epoch of work.

Diagnostic (every method): the L2 norm of the gradient the optimiser applies (after `after_backward`) over the first
GRAD_NORM_STEPS steps of every task, over all trainable parameters ("all") and over those outside the heads
("backbone": the LoRA), in `RunState.grad_norms` → result.json. It shows whether training stalls at the start of a
task that begins from a merged model (the "vanishing gradient at the onset of the next task" of TRM,
research/merging-methods.md §1.2) and whether a method cures it. Not part of the run's identity: it changes no result.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from harness.backbone import CLModel
from harness.config import ExecConfig, RunConfig, run_spec
from harness.data import ImageBank
from harness.errors import ConfigError, TrainingDiverged
from harness.io import atomic_torch_save
from harness.method import Method, MethodContext, TaskData
from harness.prefetch import Prefetcher, use_prefetch
from harness.registry import get_method
from harness.schema import from_dict
from harness.seeding import generator, rng_from_host, rng_to_host
from harness.sources import SourceData, load_source
from harness.spec import BenchmarkSpec
from harness.stream import Task, TaskStream, build_stream
from harness.tracking import NULL_TRACKER, Tracker
from harness.validation import hold_out

GRAD_NORM_STEPS = 20  # steps at the start of each task whose gradient norm is recorded


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (bf16 matmuls on CPU are slow and change results)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_scheduler(opt: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@dataclass
class RunState:
    """Everything a run has produced so far; saved after every task."""

    acc: list[list[float]] = field(default_factory=list)  # R[t][j], class-incremental (no task id)
    task_aware: list[list[float]] = field(default_factory=list)  # R[t][j] scored by task j's own head only
    task_seconds: list[float] = field(default_factory=list)
    method_records: list[dict] = field(default_factory=list)
    grad_norms: list[dict] = field(default_factory=list)  # per task: {"all": [...], "backbone": [...]}, first steps
    val_acc: list[list[float]] = field(default_factory=list)  # R[t][j] on the validation split (tune=true only)

    @property
    def tasks_done(self) -> int:
        return len(self.acc)


@dataclass
class Setup:
    """The resolved inputs of a run: spec, data, stream, model, method."""

    cfg: RunConfig
    spec: BenchmarkSpec
    data: SourceData
    stream: TaskStream
    device: torch.device
    model: CLModel
    method: Method
    train_bank: ImageBank
    test_bank: ImageBank
    val_stream: TaskStream | None = None  # tune=true: tasks whose test_indices are held-out training indices
    val_record: dict | None = None  # fraction, seed, sizes and hash of the validation split
    tracker: Tracker = NULL_TRACKER  # optional experiment logging (harness/tracking.py); never changes results
    prefetch: bool = False  # gather/augment the next batch on a background thread (harness/prefetch.py)


def build(cfg: RunConfig, exec_cfg: ExecConfig) -> Setup:
    spec = run_spec(cfg)
    data = load_source(spec)
    stream = build_stream(spec, cfg.order_seed, data.train_labels, data.test_labels)
    val_stream = val_record = None
    if cfg.tune:
        stream, val_stream, val_record = hold_out(stream, data.train_labels, cfg.seed, data.split_hash)
    device = pick_device(exec_cfg.device)
    model = CLModel(cfg.backbone).to(device)
    method_cls = get_method(cfg.method)
    params = from_dict(method_cls.Params, dict(cfg.method_params), f"method_params of {cfg.method}")
    method = method_cls(params, MethodContext(config=cfg, stream=stream, device=device))
    train_bank = ImageBank(data.train_images, stream.remap(data.train_labels), spec.image, device,
                           spec.test_transform, spec.train_transform, placement=exec_cfg.data_placement)
    test_bank = ImageBank(data.test_images, stream.remap(data.test_labels), spec.image, device, spec.test_transform)
    method.ctx.train_bank = train_bank  # for hooks that pass over the task's data before training (InfLoRA)
    prefetch = use_prefetch(exec_cfg.prefetch, device)
    return Setup(cfg, spec, data, stream, device, model, method, train_bank, test_bank, val_stream, val_record,
                 prefetch=prefetch)


@torch.no_grad()
def evaluate(model: CLModel, bank: ImageBank, stream: TaskStream, t: int, batch_size: int) -> tuple[list[float], list[float]]:
    """Accuracy on each seen task j ≤ t: class-incremental (argmax over all seen classes) and task-aware."""
    seen = stream.seen_classes(t)
    if model.heads.num_classes != seen:
        raise RuntimeError(f"evaluation model has {model.heads.num_classes} outputs after task {t}, expected {seen}")
    was_training = model.training
    model.eval()
    cil, ta = [], []
    for task in stream.tasks[: t + 1]:
        correct = correct_ta = 0
        lo, hi = task.offset, task.offset + task.num_classes
        for x, y in bank.iterate(task.test_indices, batch_size):
            with autocast(bank.device):
                logits = model(x).float()
            correct += int((logits.argmax(1) == y).sum())
            correct_ta += int((logits[:, lo:hi].argmax(1) + lo == y).sum())
        n = max(len(task.test_indices), 1)
        cil.append(correct / n)
        ta.append(correct_ta / n)
    model.train(was_training)
    return cil, ta


def epoch_checkpoint_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".epoch.pt")


def train_task(
    s: Setup, task: Task, progress: Callable[[], None], epoch_ckpt: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, list[float]]:
    """begin_task, the epochs (resuming after the last epoch saved in `epoch_ckpt`, saving it after each), end_task.
    Returns the gradient norms of the task's first GRAD_NORM_STEPS steps ({"all": [...], "backbone": [...]})."""
    cfg, model, method = s.cfg, s.model, s.method
    method.begin_task(model, task)
    saved = _load_epoch_checkpoint(epoch_ckpt, s, task) if epoch_ckpt is not None and epoch_ckpt.exists() else None
    # foreach: one kernel per op over all parameters (bit-identical to the per-tensor loop, faster on CPU)
    opt = torch.optim.AdamW(method.parameter_groups(model, task), weight_decay=cfg.train.weight_decay, foreach=True)
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
        run_epoch(s, task, opt, passes, watch, heads)
        watch.check(cfg, task.index, epoch, norms)  # the epoch's one device→host sync
        sched.step()
        method.end_epoch(model, task, epoch)
        if epoch_ckpt is not None:
            _save_epoch_checkpoint(epoch_ckpt, s, task, epoch + 1, opt, sched, g, norms)
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


def _save_epoch_checkpoint(
    path: Path, s: Setup, task: Task, epochs_done: int, opt, sched, g: torch.Generator, grad_norms: dict
) -> None:
    atomic_torch_save(
        {
            "run_id": s.cfg.run_id(),
            "task": task.index,
            "epochs_done": epochs_done,
            "model": s.model.trainable_state(),
            "method": s.method.state_dict() if s.method.state_changes_in_task else None,  # else: in checkpoint.pt
            # generator states as NumPy arrays: map_location never moves them (rng_to_host)
            "method_rng": rng_to_host(s.method.rng_state()),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "batches": rng_to_host(g.get_state()),
            "grad_norms": grad_norms,
            # Nothing in the loop should draw from the global RNGs; saved anyway so that a library that does
            # (e.g. dropout) still resumes exactly.
            "torch_rng": rng_to_host(torch.get_rng_state()),
            "cuda_rng": rng_to_host(torch.cuda.get_rng_state_all()) if s.device.type == "cuda" else None,
        },
        path,
    )


def _load_epoch_checkpoint(path: Path, s: Setup, task: Task) -> dict | None:
    """Restore model and method state from an epoch checkpoint of `task` (its generators: `restore_rngs`); None if it
    is for another task."""
    ckpt = torch.load(path, map_location=s.device, weights_only=False)
    if ckpt["run_id"] != s.cfg.run_id():
        raise RuntimeError(f"checkpoint {path} belongs to run {ckpt['run_id']}, not {s.cfg.run_id()}")
    if ckpt["task"] != task.index:  # stale: written before the task checkpoint that superseded it
        return None
    s.model.load_trainable_state(ckpt["model"])
    if ckpt["method"] is not None:  # None: begin_task has already rebuilt it from the task checkpoint's state
        s.method.load_state_dict(ckpt["method"])
    return ckpt


def restore_rngs(ckpt: dict, method: Method, batches: torch.Generator) -> None:
    """Set the method's generators, the batch-order generator and torch's global RNGs to an epoch checkpoint's
    states, as CPU byte tensors whatever device the checkpoint was loaded onto (Generator.set_state rejects others)."""
    method.load_rng_state(rng_from_host(ckpt["method_rng"]))
    batches.set_state(rng_from_host(ckpt["batches"]))
    torch.set_rng_state(rng_from_host(ckpt["torch_rng"]))
    cuda = ckpt["cuda_rng"]
    if cuda is not None and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng_from_host(list(cuda)))


def save_checkpoint(path: Path, s: Setup, state: RunState) -> None:
    atomic_torch_save(
        {"run_id": s.cfg.run_id(), "model": s.model.trainable_state(), "method": s.method.state_dict(), "state": state.__dict__},
        path,
    )


def load_checkpoint(path: Path, s: Setup) -> RunState:
    ckpt = torch.load(path, map_location=s.device, weights_only=False)
    if ckpt["run_id"] != s.cfg.run_id():
        raise RuntimeError(f"checkpoint {path} belongs to run {ckpt['run_id']}, not {s.cfg.run_id()}")
    s.model.load_trainable_state(ckpt["model"])
    s.method.load_state_dict(ckpt["method"])
    return RunState(**ckpt["state"])


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
    with bar:
        for task in s.stream.tasks[state.tasks_done :]:
            if stop_after is not None and state.tasks_done >= stop_after:
                break
            start = time.perf_counter()
            epoch_ckpt = epoch_checkpoint_path(checkpoint) if checkpoint is not None else None
            norms = train_task(s, task, progress=lambda: bar.update(1), epoch_ckpt=epoch_ckpt, log=log)
            cil, ta = evaluate(s.method.eval_model(s.model), s.test_bank, s.stream, task.index, s.cfg.train.eval_batch_size)
            if any(math.isnan(v) for v in cil):
                raise TrainingDiverged(f"task {task.index}: accuracy is NaN")
            state.acc.append(cil)
            if s.val_stream is not None:  # same evaluation model, held-out training samples
                state.val_acc.append(evaluate(s.method.eval_model(s.model), s.train_bank, s.val_stream, task.index,
                                              s.cfg.train.eval_batch_size)[0])
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
                save_checkpoint(checkpoint, s, state)
                epoch_checkpoint_path(checkpoint).unlink(missing_ok=True)  # superseded by the task checkpoint
    return state
