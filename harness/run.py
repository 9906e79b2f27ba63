"""Run one cell: skip it if finished, lock it, train, write the result atomically. Errors are recorded, not results."""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from harness.config import ExecConfig, RunConfig
from harness.io import atomic_write_json, file_lock, read_json
from harness.store import RESULT, is_complete, run_dir


@dataclass
class Outcome:
    status: str  # done | skipped | busy | failed
    run_dir: str
    message: str = ""


def execute(cfg: RunConfig, exec_cfg: ExecConfig, root: Path | None = None, force: bool = False) -> Outcome:
    """Run `cfg` unless it already finished (or `force`). Raises on failure after writing error.json."""
    import torch

    from harness import metrics
    from harness.envinfo import environment
    from harness.trainer import build, run_tasks

    d = run_dir(cfg, root)
    if is_complete(d) and not force:
        return Outcome("skipped", str(d), "already finished")
    with file_lock(d / ".lock", blocking=False) as got:
        if not got:
            return Outcome("busy", str(d), "running in another process")
        if force:
            for name in (RESULT, "checkpoint.pt", "error.json"):
                (d / name).unlink(missing_ok=True)
        elif is_complete(d):  # finished while we waited for the lock
            return Outcome("skipped", str(d), "already finished")
        atomic_write_json(d / "config.json", {"run_id": cfg.run_id(), "config": cfg.to_dict()})
        if exec_cfg.threads:
            torch.set_num_threads(exec_cfg.threads)
        start = time.time()
        try:
            s = build(cfg, exec_cfg)
            state = run_tasks(s, exec_cfg, checkpoint=d / "checkpoint.pt")
            n = [len(t.test_indices) for t in s.stream.tasks]
            result = {
                "status": "complete",
                "run_id": cfg.run_id(),
                "config": cfg.to_dict(),
                "method_info": {
                    "description": s.method.description,
                    "reconstruction": s.method.reconstruction,
                },
                "stream": {**s.stream.record(), "order_seed": cfg.order_seed, "split_hash": s.data.split_hash},
                "num_test": n,
                "acc_matrix": state.acc,
                "task_aware_matrix": state.task_aware,
                "metrics": metrics.summarize(state.acc, n, state.task_aware),
                "method_records": state.method_records,
                "timings": {"task_seconds": state.task_seconds, "wall_seconds": time.time() - start},
                "env": environment(s.device),
            }
        except BaseException as exc:
            atomic_write_json(
                d / "error.json",
                {"run_id": cfg.run_id(), "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
            )
            raise
        atomic_write_json(d / RESULT, result)
        (d / "checkpoint.pt").unlink(missing_ok=True)
        (d / "error.json").unlink(missing_ok=True)
    return Outcome("done", str(d))


def last_error(cfg: RunConfig, root: Path | None = None) -> str | None:
    f = run_dir(cfg, root) / "error.json"
    return read_json(f)["error"] if f.exists() else None


def clear(cfg: RunConfig, root: Path | None = None) -> None:
    shutil.rmtree(run_dir(cfg, root), ignore_errors=True)
