"""A run's checkpoints, so that a killed run resumes to the numbers of an uninterrupted one (bit-exact on CPU).
Two checkpoint files, each written atomically (the epoch one serialised on a background thread while the
next epoch trains, `ExecConfig.background_checkpoints`):

    checkpoint.pt        after every task: model trainable state, method state, RunState
    checkpoint.epoch.pt  after every epoch of the task in progress: the model, method state and method generators,
                         optimiser, scheduler, batch-order generator, torch's global RNG and the gradient norms
                         recorded so far in the task, as they are after that epoch. Resuming replays the task's
                         `begin_task` on the state of checkpoint.pt, then loads this; it is ignored once
                         checkpoint.pt has moved past its task.

A run killed at any point (time limit, preemption, scancel, OOM) thus loses at most one epoch of work.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.core.devices import tensors_to
from harness.core.io import BackgroundWriter, atomic_torch_save, host_snapshot
from harness.core.seeding import rng_from_host, rng_to_host
from harness.data.stream import Task
from harness.method.base import Method
from harness.train.setup import RunState, Setup


def epoch_checkpoint_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".epoch.pt")


def save_epoch_checkpoint(
    path: Path, s: Setup, task: Task, epochs_done: int, opt, sched, g: torch.Generator, grad_norms: dict,
    writer: BackgroundWriter | None = None,
) -> None:
    """Write the epoch checkpoint; with `writer`, the state is snapshotted to host memory here (asynchronous copies,
    harness/core/io.py host_snapshot) and serialised and renamed into place on the writer's thread, while training goes on."""
    state = {
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
    }
    if writer is None:
        atomic_torch_save(state, path)
        return
    snapshot, ready = host_snapshot(state)

    def write() -> None:
        ready()
        atomic_torch_save(snapshot, path)

    writer.submit(write)


def load_epoch_checkpoint(path: Path, s: Setup, task: Task) -> dict | None:
    """Restore model and method state from an epoch checkpoint of `task` (its generators: `restore_rngs`); None if it
    is for another task."""
    ckpt = _load_own(path, s)
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
    ckpt = _load_own(path, s)
    s.model.load_trainable_state(ckpt["model"])
    s.method.load_state_dict(ckpt["method"])
    return RunState(**ckpt["state"])


def _load_own(path: Path, s: Setup) -> dict:
    """A checkpoint of this run (its run_id checked), loaded on the CPU; the model and method state are then moved
    to the run's device. The optimiser state stays on the CPU: `Optimizer.load_state_dict` moves each moment to its
    parameter's device and keeps AdamW's `step` counters where they were loaded — on the host, as a fresh optimiser
    keeps them. (Loaded with map_location=device they would sit on the GPU and every later step would read them back
    to the host: one sync per parameter per step for the rest of the task.)"""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["run_id"] != s.cfg.run_id():
        raise RuntimeError(f"checkpoint {path} belongs to run {ckpt['run_id']}, not {s.cfg.run_id()}")
    for key in ("model", "method"):
        ckpt[key] = tensors_to(ckpt[key], s.device)
    return ckpt
