"""What SLURM knows of clmerge's jobs: the ledger of submissions (results/jobs/slurm/ledger.json, run_id → its
jobs, newest last) and the jobs' current states from squeue and sacct. Read by `clmerge status`
(harness/dispatch/status.py) and written by submissions (harness/dispatch/slurm.py)."""

from __future__ import annotations

import getpass
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.core.io import atomic_write_json, file_lock, read_json
from harness.core.paths import results_dir


# ---- ledger ------------------------------------------------------------------------------------------------------


def slurm_dir(root: Path | None = None) -> Path:
    """results/jobs/slurm: next to the local executor's job folders (results/jobs/<pid>), git-ignored with them."""
    return Path(root or results_dir()) / "jobs" / "slurm"


def read_ledger(root: Path | None = None) -> dict[str, list[dict]]:
    f = slurm_dir(root) / "ledger.json"
    return read_json(f)["cells"] if f.exists() else {}


def ledger_lock(root: Path | None = None):
    """Held while a submission checks the queue and submits (and while the ledger is rewritten)."""
    return file_lock(slurm_dir(root) / ".ledger.lock")


def _record(root: Path, entries: dict[str, dict]) -> None:
    """Append submissions to the ledger; the caller holds ledger_lock."""
    ledger = read_ledger(root)
    for run_id, entry in entries.items():
        ledger.setdefault(run_id, []).append(entry)
    atomic_write_json(slurm_dir(root) / "ledger.json", {"cells": ledger})


# ---- queue states ------------------------------------------------------------------------------------------------

SACCT_CHUNK = 2000  # job ids per sacct call
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED", "RESIZING"}
PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}


@dataclass
class JobState:
    state: str  # SLURM's word: RUNNING, PENDING, COMPLETED, CANCELLED, FAILED, TIMEOUT, OUT_OF_MEMORY, … or GONE
    elapsed: str = ""
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in RUNNING or self.state in PENDING


class QueueError(RuntimeError):
    """squeue could not be asked: the states of the jobs are unknown."""


def _slurm(*args: str) -> str:
    try:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:  # e.g. slurmctld down: clients retry for 60 s
        raise QueueError(f"{' '.join(args[:2])} did not answer within {exc.timeout:.0f} s") from exc
    if p.returncode != 0:
        raise QueueError(f"{' '.join(args[:2])} failed (exit {p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def jobs_with_comment(comment: str) -> list[str]:
    """This user's queued or running jobs (array elements one by one) whose comment is `comment`: how a submission
    whose sbatch failed or timed out is checked for jobs the controller accepted anyway."""
    text = _slurm("squeue", "-u", getpass.getuser(), "-r", "-h", "-o", "%i|%k")
    return [jid for jid, _, c in (line.partition("|") for line in text.splitlines()) if c.strip() == comment]


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _slurm("scancel", *job_ids)


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """Current state of each job id ("123" or array element "123_4"), one squeue and at most one sacct call.

    squeue first: it is live (sacct lags by seconds) and, with -t all, also shows jobs that ended recently. A job
    squeue does not list has ended: its state then comes from sacct, or is GONE where accounting has forgotten it
    (or there is none) — it is not pending or running either way, so nothing ever waits on it."""
    ids = set(job_ids)
    if not ids:
        return {}
    out: dict[str, JobState] = {}
    try:
        text = _slurm("squeue", "-u", getpass.getuser(), "-r", "-h", "-t", "all", "-o", "%i|%T|%M|%r")
    except FileNotFoundError as exc:
        raise QueueError("squeue not found: is this a SLURM login node?") from exc
    for line in text.splitlines():
        jid, state, elapsed, reason = (line.split("|") + ["", "", ""])[:4]
        if jid in ids:
            out[jid] = JobState(state, elapsed, "" if reason in ("None", "(null)") else reason)
    missing = sorted(ids - set(out))
    if missing:
        text = ""
        # in chunks: one argument may not exceed 128 KiB (Linux MAX_ARG_STRLEN), ~12,000 array element ids
        for i in range(0, len(missing), SACCT_CHUNK):
            try:
                text += _slurm("sacct", "-X", "-n", "-P", "-j", ",".join(missing[i : i + SACCT_CHUNK]), "--format=JobID,State,Elapsed")
            except (QueueError, FileNotFoundError):
                break  # no accounting: these jobs are not in the queue any more, so they ended
        for line in text.splitlines():
            jid, state, elapsed = (line.split("|") + ["", ""])[:3]
            if jid in ids and jid not in out:
                out[jid] = JobState(state.split()[0] if state else "UNKNOWN", elapsed)  # "CANCELLED by 0"
    for jid in missing:
        out.setdefault(jid, JobState("GONE", reason="not in the queue nor in accounting"))
    return out


def slurm_available() -> str | None:
    """None if SLURM answers here, else why not (for messages and test skips)."""
    from shutil import which

    if not which("sbatch"):
        return "sbatch not found (SLURM client tools not installed)"
    try:
        _slurm("squeue", "-u", getpass.getuser(), "-h", "-o", "%i")
    except QueueError as exc:
        hint = "" if os.environ.get("SLURM_CONF") else " (SLURM_CONF is not set; for the dev cluster: eval \"$(slurm/dev-cluster.sh env)\")"
        return f"SLURM does not answer: {exc}{hint}"
    return None
