"""Hand-made tasks and data for exact method tests on the micro model (3 classes per task, fixed float64 batches)."""

from __future__ import annotations

import numpy as np
import torch

from harness.data.stream import Task

N_CLS = 3


def make_task(i: int, n: int = 10) -> Task:
    """Task i with classes 3i..3i+2 and `n` training indices (no test samples)."""
    return Task(index=i, classes=tuple(range(i * N_CLS, (i + 1) * N_CLS)), offset=i * N_CLS,
                train_indices=np.arange(n), test_indices=np.arange(0))


class FakeData:
    """Duck-typed TaskData and ImageBank: `n` seeded float64 images of the task's classes, in a fixed order."""

    def __init__(self, task: Task, seed: int, n: int = 10):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 16, 16, generator=g, dtype=torch.float64)
        self.y = task.offset + torch.randint(N_CLS, (n,), generator=g)
        self.bank = self

    def batches(self, batch_size: int, generator=None):
        for i in range(0, len(self.y), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]

    def iterate(self, indices, batch_size: int, generator=None):
        return self.batches(batch_size)


def crash_in_task_1(monkeypatch, method_cls, cfg, epochs_done: int) -> None:
    """Make `method_cls.training_loss` raise KeyboardInterrupt (a simulated kill) at the 2nd step of epoch
    `epochs_done` of task 1, so the run's last epoch checkpoint is (task 1, `epochs_done`). Undo with
    `monkeypatch.undo()` or by setting the attribute back."""
    original = method_cls.training_loss
    steps: dict[int, int] = {}

    def crash(self, model, x, y, task):
        steps[task.index] = steps.get(task.index, 0) + 1
        per_epoch = -(-len(self.train_indices(task)) // cfg.train.batch_size)
        if task.index == 1 and steps[1] == epochs_done * per_epoch + 2:
            raise KeyboardInterrupt("simulated kill mid-epoch")
        return original(self, model, x, y, task)

    monkeypatch.setattr(method_cls, "training_loss", crash)


def kill_in_task_1(monkeypatch, method_cls, cfg, exec_cfg, epochs_done: int = 1):
    """Run `cfg` until a simulated kill in task 1 (`crash_in_task_1`), check that the epoch checkpoint left behind is
    (task 1, `epochs_done`) and that no result was written, restore the method; the run's directory."""
    import pytest
    import torch

    from harness.store import is_complete, run_dir
    from harness.train.run import execute

    original = method_cls.training_loss
    crash_in_task_1(monkeypatch, method_cls, cfg, epochs_done)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, exec_cfg)
    d = run_dir(cfg)
    ep = torch.load(d / "checkpoint.epoch.pt", weights_only=False)
    assert (ep["task"], ep["epochs_done"]) == (1, epochs_done) and not is_complete(d)
    monkeypatch.setattr(method_cls, "training_loss", original)
    return d


def finished_result(cfg, wall_seconds: float = 1) -> dict:
    """A minimal result.json of the finished cell `cfg` (a RunConfig or its dict): its own run id and config (so it
    is not a `mismatch`) and the current code (so it is `done`, not `stale`)."""
    from harness.config import RunConfig

    from tests.slurm_jobs import result_record

    cfg = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    return result_record(cfg.run_id(), cfg.to_dict(), _current_code(cfg.method), wall_seconds)


_CODE: dict[str, dict] = {}


def _current_code(method: str) -> dict:
    from harness.method.code_identity import code_identity

    if method not in _CODE:  # hashing the sources once per method and test process
        _CODE[method] = code_identity(method)
    return _CODE[method]
