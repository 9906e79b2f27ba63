"""`clmerge status`: where every cell of a grid stands, whichever executor ran it.

    done     result.json is there (elapsed: the run's wall time)
    running  its SLURM job runs, or some process holds the cell's .lock (e.g. a local run)
    pending  its SLURM job waits in the queue (also right after a requeue)
    failed   the run recorded an error, or its last job ended without a result (scancel, OOM, node failure,
             time limit): the last lines of the job's log say why
    todo     never submitted
    unknown  SLURM could not be asked (the job may still run)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import RunConfig
from harness.core.io import file_lock
from harness.core.paths import results_dir
from harness.dispatch.slurm_queue import PENDING, QueueError, job_states, read_ledger
from harness.store import load_result, run_dir

STATES = ("done", "running", "pending", "failed", "todo", "unknown")


@dataclass
class CellStatus:
    cfg: RunConfig
    state: str
    job_id: str = ""
    elapsed: str = ""
    detail: str = ""  # SLURM state, error message
    log_tail: list[str] = field(default_factory=list)
    run_id: str = ""  # cfg.run_id(), computed once

    def __post_init__(self) -> None:
        self.run_id = self.run_id or self.cfg.run_id()


def is_locked(d: Path) -> bool:
    """Whether a live process holds the run's .lock (flock dies with its holder, so a killed job never holds it)."""
    f = d / ".lock"
    if not f.exists():
        return False
    with file_lock(f, blocking=False) as got:
        return not got


def tail(path: str | Path, n: int = 12) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            return fh.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def cell_statuses(cells: list[RunConfig], root: Path | None = None, tail_lines: int = 12) -> list[CellStatus]:
    root = Path(root or results_dir())
    ledger = read_ledger(root)
    rids = [c.run_id() for c in cells]  # once per cell: hashing a config is most of status's own cost
    dirs = [run_dir(c, root, rid) for c, rid in zip(cells, rids)]
    entries = {rid: ledger.get(rid, []) for rid in rids}
    results = {rid: r for c, rid in zip(cells, rids) if (r := load_result(c, root, rid)) is not None}  # parsed once
    complete = set(results)
    # SLURM is asked only about unfinished cells' jobs: a finished grid of 10,000 cells costs no squeue/sacct lines
    ids = [e["job_id"] for rid, es in entries.items() if rid not in complete for e in es]
    try:
        states, queue_error = job_states(ids), ""
    except QueueError as exc:
        states, queue_error = {}, str(exc)
    out = []
    for c, rid, d in zip(cells, rids, dirs):
        es = entries[rid]
        last = es[-1] if es else None
        jid = last["job_id"] if last else ""
        if rid in complete:
            try:
                wall = results[rid]["timings"]["wall_seconds"]
            except (KeyError, TypeError):
                wall = 0.0
            out.append(CellStatus(c, "done", jid, _seconds(wall), run_id=rid))
            continue
        active = [(e["job_id"], states[e["job_id"]]) for e in es if e["job_id"] in states and states[e["job_id"]].active]
        if active:
            j, st = active[-1]
            word = "pending" if st.state in PENDING else "running"
            detail = " ".join(x for x in (st.state if st.state not in ("RUNNING", "PENDING") else "", st.reason) if x)
            out.append(CellStatus(c, word, j, st.elapsed, detail, run_id=rid))
            continue
        if is_locked(d):
            out.append(CellStatus(c, "running", jid, detail="cell locked by a running process", run_id=rid))
            continue
        if es and queue_error:
            out.append(CellStatus(c, "unknown", jid, detail=queue_error, run_id=rid))
            continue
        err = d / "error.json"
        if last is None and not err.exists():
            out.append(CellStatus(c, "todo", run_id=rid))
            continue
        detail, trace = [], ""
        st = states.get(jid)
        if st is not None:
            detail.append(f"job {st.state}" + (" (ended without a result)" if st.state == "COMPLETED" else ""))
        if err.exists():
            try:
                e = json.loads(err.read_text())
                detail.append(e["error"])
                trace = e.get("traceback", "")
            except (ValueError, KeyError, OSError):
                pass
        lines = tail(last["stderr"], tail_lines) if last else []
        if last and not lines:
            lines = tail(last["stdout"], tail_lines)
        if not lines:  # a local run: its recorded traceback
            lines = trace.splitlines()[-tail_lines:]
        out.append(CellStatus(c, "failed", jid, st.elapsed if st else "", "; ".join(detail), lines, run_id=rid))
    return out


def format_statuses(statuses: list[CellStatus]) -> str:
    """A table, one line per cell, then the log tail of each failed cell, then counts."""
    lines = [f"{'state':<8} {'job':<12} {'elapsed':>10}  {'benchmark':<18} {'method':<14} {'seed':>4}  run"]
    for s in statuses:
        c = s.cfg
        lines.append(
            f"{s.state:<8} {s.job_id or '-':<12} {s.elapsed or '-':>10}  {c.benchmark:<18} {c.method:<14} {c.seed:>4}  {s.run_id}"
            + (f"  {s.detail}" if s.detail and s.state != "failed" else "")
        )
    for s in statuses:
        if s.state == "failed":
            lines += ["", f"failed: {s.cfg.benchmark} × {s.cfg.method} × seed {s.cfg.seed} (run {s.run_id}, job {s.job_id or '-'}): {s.detail}"]
            lines += [f"    {line}" for line in s.log_tail]
    counts = {k: sum(s.state == k for s in statuses) for k in STATES}
    lines += ["", ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f" — {len(statuses)} cells"]
    return "\n".join(lines)
