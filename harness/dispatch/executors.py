"""Dispatch cells through submitit: `local` (one subprocess per job, a bounded number in flight), `debug`
(in-process, sequential; for stepping through with a debugger); `slurm` (job arrays) is in harness/dispatch/slurm.py.

A job runs one or more cells (`cells_per_job`) and never raises: every cell's outcome, including its error and
traceback, comes back as data, so one failing cell never hides the others. The job callable, `CellsJob`, is
submitit-Checkpointable: on the pre-timeout/preemption signal (USR2) submitit calls its `checkpoint()`, which
resubmits the same call, and the requeued job resumes each unfinished cell from its checkpoints on disk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import submitit

from harness.config import ExecConfig, RunConfig
from harness.core.errors import unknown
from harness.core.paths import results_dir
from harness.store import is_finished, run_dir, stale_reason

EXECUTORS = ("local", "debug")


@dataclass
class CellOutcome:
    run_id: str
    benchmark: str
    method: str
    seed: int
    status: str  # done | skipped | busy | failed | interrupted
    message: str = ""
    traceback: str = ""


def run_cells(cells: list[dict], exec_cfg: dict, root: str) -> list[dict]:
    """The job body: run each cell in turn, returning outcomes as plain dicts (picklable, never raises)."""
    from harness.train.run import execute

    if threading.current_thread() is threading.main_thread():
        # dispatch() starts local jobs with SIGINT ignored (so submitit's controller survives Ctrl-C); the cells
        # themselves take it, to record `interrupted` and stop cleanly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    out = []
    for data in cells:
        cfg = RunConfig.from_dict(data)
        base = dict(run_id=cfg.run_id(), benchmark=cfg.benchmark, method=cfg.method, seed=cfg.seed)
        try:
            o = execute(cfg, ExecConfig(**exec_cfg), Path(root))
            out.append(asdict(CellOutcome(**base, status=o.status, message=o.message)))
        except KeyboardInterrupt:  # Ctrl-C: this cell is recorded as interrupted; the job's other cells wait
            out.append(asdict(CellOutcome(**base, status="interrupted", message="stopped by Ctrl-C (resumable)")))
            break
        except Exception as exc:  # noqa: BLE001 - reported per cell
            out.append(asdict(CellOutcome(**base, status="failed", message=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())))
    return out


class CellsJob(submitit.helpers.Checkpointable):
    """The callable submitted to submitit: `run_cells`, Checkpointable so that a signalled job requeues itself.

    Its `checkpoint()` (submitit's default) resubmits the same arguments: progress lives in the cells' checkpoints
    on disk, not in this object, which is also why a requeue without `checkpoint()` (scontrol requeue, preemption,
    node failure) resumes just the same."""

    def __call__(self, cells: list[dict], exec_cfg: dict, root: str) -> list[dict]:
        out = run_cells(cells, exec_cfg, root)
        for o in out:  # one line per cell in the job's log, where `clmerge status` shows it from
            msg = f": {o['message']}" if o["message"] else ""
            print(f"[{o['status']}] {o['benchmark']} × {o['method']} × seed {o['seed']} (run {o['run_id']}){msg}", flush=True)
            if o["traceback"]:
                print(o["traceback"], file=sys.stderr, flush=True)
        return out


def pending(cells: list[RunConfig], root: Path | None = None, rerun_stale: bool = False) -> list[RunConfig]:
    """Cells without a finished result of their own (a result.json that does not match its cell is rerun); with
    `rerun_stale`, also those whose result's code is stale."""
    return [c for c in cells
            if not is_finished(run_dir(c, root), c.run_id()) or (rerun_stale and stale_reason(run_dir(c, root)))]


def dispatch(
    cells: list[RunConfig],
    executor: str = "local",
    root: Path | None = None,
    max_parallel: int | None = None,
    cells_per_job: int = 1,  # >1 amortises process start-up (imports) over several small cells
    exec_cfg: ExecConfig | None = None,
    log: Callable[[str], None] = print,
    track: str | None = None,  # experiment tracking backend for every cell (harness/train/tracking.py)
    rerun_stale: bool = False,  # rerun finished cells whose code changed since (else kept, and reported)
    setting_of: Callable[[RunConfig], str] | None = None,  # a sweep's setting label of a cell, shown in progress lines
) -> list[CellOutcome]:
    """Run the unfinished `cells`; finished ones are skipped. Returns one outcome per cell."""
    if executor not in EXECUTORS:
        raise unknown("executor", executor, EXECUTORS)
    root = Path(root or results_dir())
    rerun_stale = exec_cfg.rerun_stale if exec_cfg is not None else rerun_stale
    todo = pending(cells, root, rerun_stale)
    todo_ids = {c.run_id() for c in todo}
    skipped, stale = [], 0
    for c in cells:
        if c.run_id() in todo_ids:
            continue
        why = stale_reason(run_dir(c, root))
        stale += bool(why)
        skipped.append(CellOutcome(c.run_id(), c.benchmark, c.method, c.seed, "skipped",
                                   "already finished" + (f"; STALE, {why}" if why else "")))
    if skipped:
        log(f"{len(skipped)} of {len(cells)} cells already finished: skipped")
    if stale:  # never silently reused
        log(f"WARNING: {stale} of them are stale (their code changed since they ran) and kept as they are; "
            "`clmerge status` lists them, --rerun-stale runs them again")
    if not todo:
        return skipped
    cpus = os.cpu_count() or 1
    max_parallel = max(1, max_parallel or cpus) if executor == "local" else 1
    exec_cfg = exec_cfg or ExecConfig(threads=max(1, cpus // max_parallel), progress=False, log=track,
                                      rerun_stale=rerun_stale)
    # Round-robin packing: each job gets a mix of methods, so slow methods do not pile up in one job.
    n_jobs = -(-len(todo) // max(1, cells_per_job))
    chunks = [todo[i::n_jobs] for i in range(n_jobs)]
    folder = root / "jobs" / "%j"
    ex = submitit.LocalExecutor(folder=folder) if executor == "local" else submitit.DebugExecutor(folder=folder)
    if executor == "local":
        ex.update_parameters(timeout_min=7 * 24 * 60)
    log(f"dispatching {len(todo)} cells as {len(chunks)} {executor} jobs ({max_parallel} at a time)")

    from harness.dispatch.progress import CellProgress

    bar = CellProgress(len(todo), enabled=executor == "local")
    log = bar.printer(log)
    outcomes: list[CellOutcome] = []
    queue = list(chunks)
    running: list[tuple[object, list[RunConfig]]] = []

    def collect(job, chunk: list[RunConfig]) -> None:
        try:
            results = [CellOutcome(**r) for r in job.result()]
        except Exception as exc:  # the job itself died (killed, out of memory…)
            results = [
                CellOutcome(c.run_id(), c.benchmark, c.method, c.seed, "failed", f"job {job.job_id} died: {exc}")
                for c in chunk
            ]
        labels = {c.run_id(): f" [{setting_of(c)}]" for c in chunk} if setting_of else {}
        for r in results:
            log(f"  [{r.status}] {r.benchmark} × {r.method}{labels.get(r.run_id, '')} × seed {r.seed}"
                + (f": {r.message}" if r.status == "failed" else ""))
        outcomes.extend(results)
        bar.finished([r.status for r in results])

    args = lambda chunk: ([c.to_dict() for c in chunk], asdict(exec_cfg), str(root))  # noqa: E731
    try:
        while queue or running:
            while queue and len(running) < max_parallel:
                chunk = queue.pop(0)
                with _sigint_ignored_in_children(executor == "local"):
                    running.append((ex.submit(CellsJob(), *args(chunk)), chunk))
                if executor == "debug":  # DebugExecutor runs the job when its result is asked for
                    collect(*running.pop())
            still = []
            for job, chunk in running:
                if job.done():
                    collect(job, chunk)
                else:
                    still.append((job, chunk))
            running = still
            if any(o.status == "interrupted" for o in outcomes):
                raise KeyboardInterrupt  # a cell was stopped by Ctrl-C (debug executor: in this process)
            bar.running_now(sum(len(chunk) for _, chunk in running))
            if running:
                time.sleep(0.5)
    except KeyboardInterrupt:
        # The running cells got the same SIGINT (one process group): give them a moment to record `interrupted`
        # and return, then stop without starting the queued jobs.
        deadline = time.time() + INTERRUPT_GRACE_S
        while running and time.time() < deadline:
            running = [(job, chunk) for job, chunk in running if not job.done()]
            time.sleep(0.2)
        for job, _ in running:
            job.cancel()
        bar.close()
        raise
    bar.close()
    return skipped + outcomes


INTERRUPT_GRACE_S = 30.0  # how long Ctrl-C waits for running cells to record their interruption


@contextlib.contextmanager
def _sigint_ignored_in_children(local: bool):
    """Start a local job with SIGINT ignored: submitit's job controller inherits it and so survives Ctrl-C (it would
    print its own KeyboardInterrupt traceback), while the cells re-enable it in `run_cells`. Main thread only."""
    if not local or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
