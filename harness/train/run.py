"""Run one cell: skip it if finished, lock it, train, write the result atomically. Errors are recorded, not results.

Besides the files listed in harness/store.py, a run directory gets `events.log`: one line per start, resume,
interruption, failure and completion, with the host, pid and SLURM/submitit job id, so a requeued or retried cell
can be followed.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from harness.config import ExecConfig, RunConfig
from harness.core.io import atomic_write_json, file_lock
from harness.core.paths import results_dir
from harness.store import RESULT, is_complete, run_dir


@dataclass
class Outcome:
    status: str  # done | skipped | busy | failed
    run_dir: str
    message: str = ""


CHECKPOINTS = ("checkpoint.pt", "checkpoint.epoch.pt")


def job_id() -> str:
    """The SLURM (array) job id or submitit local job id running this process, '' outside a job."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID", "")


def log_event(d: Path, message: str) -> None:
    """Append one line to the run's events.log (a single small write: no torn lines)."""
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    line = f"{stamp} host={socket.gethostname()} pid={os.getpid()} job={job_id() or '-'} {message}\n"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "events.log", "a") as fh:
        fh.write(line)


def execute(cfg: RunConfig, exec_cfg: ExecConfig, root: Path | None = None, force: bool = False) -> Outcome:
    """Run `cfg` unless it already finished (or `force`). Raises on failure after writing error.json."""
    import torch

    from harness.core.envinfo import environment
    from harness.data.validation import validation_result
    from harness.train.setup import build
    from harness.train.tracking import open_tracker
    from harness.train.trainer import run_tasks

    d = run_dir(cfg, root)
    if is_complete(d) and not force:
        return Outcome("skipped", str(d), "already finished")
    with file_lock(d / ".lock", blocking=False) as got:
        if not got:
            log_event(d, "busy: locked by another process; not run here")
            return Outcome("busy", str(d), "running in another process")
        if force:
            for name in (RESULT, *CHECKPOINTS, "error.json"):
                (d / name).unlink(missing_ok=True)
        elif is_complete(d):  # finished while we waited for the lock
            return Outcome("skipped", str(d), "already finished")
        atomic_write_json(d / "config.json", {"run_id": cfg.run_id(), "config": cfg.to_dict()})
        if exec_cfg.threads:
            torch.set_num_threads(exec_cfg.threads)
        start = time.time()
        log_event(d, "start")
        try:
            s = build(cfg, exec_cfg)
            s.tracker = open_tracker(exec_cfg.log, cfg, Path(root or results_dir()))
            state = run_tasks(s, exec_cfg, checkpoint=d / "checkpoint.pt", log=lambda m: log_event(d, m))
            n = [len(t.test_indices) for t in s.stream.tasks]
            class_il = s.stream.scenario == "class-il"
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
                "task_aware_matrix": state.task_aware if class_il else None,
                "metrics": run_metrics(state, n, class_il),
                "method_records": state.method_records,
                "grad_norms": state.grad_norms,  # first steps of each task (harness/train/trainer.py GRAD_NORM_STEPS)
                "timings": {"task_seconds": state.task_seconds, "wall_seconds": time.time() - start},
                "env": environment(s.device),
            }
            if s.head_record is not None:  # head: pretraining-probe
                result["head"] = s.head_record
            if s.val_stream is not None:  # tune=true only: untuned results keep their exact content
                result["validation"] = validation_result(s.val_record, state.val_acc)
            s.tracker.finish(result)
            s.tracker.close()
        except SystemExit:
            # submitit's pre-timeout/preemption handler requeued the job and exits: not a failure; the next start
            # resumes from the checkpoints.
            log_event(d, "interrupted: job requeued")
            raise
        except BaseException as exc:
            log_event(d, f"failed: {type(exc).__name__}: {exc}")
            atomic_write_json(
                d / "error.json",
                {"run_id": cfg.run_id(), "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
            )
            raise
        atomic_write_json(d / RESULT, result)
        log_event(d, "done")
        for name in (*CHECKPOINTS, "error.json"):
            (d / name).unlink(missing_ok=True)
    return Outcome("done", str(d))


def clear(cfg: RunConfig, root: Path | None = None) -> None:
    shutil.rmtree(run_dir(cfg, root), ignore_errors=True)


def run_metrics(state, n: list[int], class_il: bool) -> dict:
    """harness/math/metrics.py's summary. domain-il: one head scores every task, so there is no task-aware accuracy
    (it would equal the accuracy itself); `task_aware_a_last` is NaN there and reports show it as missing."""
    import math

    from harness.math import metrics

    if class_il:
        return metrics.summarize(state.acc, n, state.task_aware)
    return {**metrics.summarize(state.acc, n), "task_aware_a_last": math.nan}
