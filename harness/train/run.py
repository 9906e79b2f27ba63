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
from harness.core import determinism
from harness.core.determinism import deterministic_kernels
from harness.core.io import atomic_write_json, file_lock
from harness.core.paths import results_dir
from harness.store import INTERRUPTED, RESULT, is_complete, is_finished, result_mismatch, run_dir, stale_reason


@dataclass
class Outcome:
    status: str  # done | skipped | busy | failed | interrupted
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


def _finished(d: Path, run_id: str, exec_cfg: ExecConfig) -> Outcome | None:
    """The outcome of a finished cell that is not run again: skipped, saying so when its code is stale; None when it
    must run (not finished, a result.json that is not this cell's, or stale with `exec_cfg.rerun_stale`)."""
    if not is_finished(d, run_id):
        return None
    stale = stale_reason(d)
    if stale and exec_cfg.rerun_stale:
        return None
    return Outcome("skipped", str(d), "already finished" + (f"; STALE, {stale} (rerun with --rerun-stale)" if stale else ""))


def execute(cfg: RunConfig, exec_cfg: ExecConfig, root: Path | None = None, force: bool = False) -> Outcome:
    """Run `cfg` unless it already finished (or `force`, or its code is stale and `exec_cfg.rerun_stale`). Raises on
    failure after writing error.json."""
    import torch

    from harness.core.envinfo import environment
    from harness.data.validation import validation_result
    from harness.train.setup import build
    from harness.train.tracking import NULL_TRACKER, open_tracker
    from harness.train.trainer import run_tasks

    from harness.method.code_identity import code_identity

    determinism.check(exec_cfg.deterministic)  # a bad value fails here, before the cell's directory is touched
    d = run_dir(cfg, root)
    if not force and (kept := _finished(d, cfg.run_id(), exec_cfg)) is not None:
        return kept
    with file_lock(d / ".lock", blocking=False) as got:
        if not got:
            log_event(d, "busy: locked by another process; not run here")
            return Outcome("busy", str(d), "running in another process")
        if not force and (kept := _finished(d, cfg.run_id(), exec_cfg)) is not None:  # finished while we waited
            return kept
        if force or is_complete(d):  # forced, a stale result rerun, or a mismatched result replaced: from scratch
            if is_complete(d):
                why = "--force" if force else (result_mismatch(d, cfg.run_id()) or stale_reason(d))
                log_event(d, "rerun: " + why)
            for name in (RESULT, *CHECKPOINTS, "error.json", INTERRUPTED):
                (d / name).unlink(missing_ok=True)
        atomic_write_json(d / "config.json", {"run_id": cfg.run_id(), "config": cfg.to_dict()})
        (d / INTERRUPTED).unlink(missing_ok=True)  # this attempt supersedes an earlier interruption
        if exec_cfg.threads:
            torch.set_num_threads(exec_cfg.threads)
        start = time.time()
        log_event(d, "start")
        tracker = NULL_TRACKER
        try:
            code = code_identity(cfg.method)  # before training: the code the run starts with
            with deterministic_kernels(exec_cfg.deterministic):
                s = build(cfg, exec_cfg)
                tracker = s.tracker = open_tracker(exec_cfg.log, cfg, Path(root or results_dir()))
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
                "env": {**environment(s.device), "deterministic_kernels": exec_cfg.deterministic},
                "code": code,  # not part of the run id: a code change makes the result stale, not a new cell
            }
            if s.head_record is not None:  # head: pretraining-probe
                result["head"] = s.head_record
            if s.val_stream is not None:  # tune=true only: untuned results keep their exact content
                result["validation"] = validation_result(s.val_record, state.val_acc)
            s.tracker.finish(result)
        except SystemExit:
            # submitit's pre-timeout/preemption handler requeued the job and exits: not a failure; the next start
            # resumes from the checkpoints.
            log_event(d, "interrupted: job requeued")
            raise
        except KeyboardInterrupt:
            # Ctrl-C is the user stopping the run, not the run failing: recorded as `interrupted` (resumable from
            # the checkpoints kept here; `status` does not count it as failed).
            log_event(d, "interrupted: KeyboardInterrupt (Ctrl-C); the next run resumes from the checkpoints")
            mark_interrupted(d, cfg.run_id())
            raise
        except BaseException as exc:
            log_event(d, f"failed: {type(exc).__name__}: {exc}")
            atomic_write_json(
                d / "error.json",
                {"run_id": cfg.run_id(), "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
            )
            raise
        finally:
            tracker.close()  # also after a failure or Ctrl-C: never leave a tracked run open
        atomic_write_json(d / RESULT, result)
        log_event(d, "done")
        for name in (*CHECKPOINTS, "error.json", INTERRUPTED):
            (d / name).unlink(missing_ok=True)
    return Outcome("done", str(d))


def mark_interrupted(d: Path, run_id: str) -> None:
    """Record a Ctrl-C: `interrupted.json` (read by `status`); a failure recorded by an earlier attempt is superseded
    (events.log keeps the history)."""
    atomic_write_json(d / INTERRUPTED, {"run_id": run_id, "reason": "KeyboardInterrupt (Ctrl-C)",
                                        "at": datetime.datetime.now().isoformat(timespec="seconds")})
    (d / "error.json").unlink(missing_ok=True)


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
