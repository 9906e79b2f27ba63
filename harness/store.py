"""The results store: one directory per run, named by the hash of its fully resolved config.

    results/runs/<benchmark>/<method>/<run_id>/
        config.json      written when the run starts
        checkpoint.pt    after every task (removed when the run completes)
        checkpoint.epoch.pt  after every epoch: optimiser, scheduler and every RNG state too (mid-task resume)
        events.log       one line per start, resume, requeue, busy, failure, completion
        result.json      written atomically at the very end: its presence is what "finished" means
        error.json       the last failure (traceback), if any
        interrupted.json the last attempt was stopped by Ctrl-C (resumable; not a failure)
        .lock            held while the run executes, so two workers never run the same cell
"""

from __future__ import annotations

from pathlib import Path

from harness.config import RunConfig, config_hash
from harness.core.io import read_json
from harness.core.paths import results_dir

RESULT = "result.json"
INTERRUPTED = "interrupted.json"


def runs_root(root: Path | None = None) -> Path:
    return (root or results_dir()) / "runs"


def run_dir(cfg: RunConfig, root: Path | None = None) -> Path:
    return runs_root(root) / cfg.benchmark / cfg.method / cfg.run_id()


def is_complete(path: Path) -> bool:
    """A run is finished iff its result.json exists, parses and says so (atomic writes make partial files impossible)."""
    f = Path(path) / RESULT
    if not f.exists():
        return False
    try:
        return read_json(f).get("status") == "complete"
    except (ValueError, OSError):
        return False


def result_mismatch(path: Path, run_id: str) -> str:
    """Why the complete result.json in `path` is not the result of cell `run_id` ('' when it is): its `run_id` or
    its stored config (rehashed) differs, e.g. a file copied or edited by hand."""
    f = Path(path) / RESULT
    try:
        r = read_json(f)
    except (ValueError, OSError) as exc:
        return f"{f}: unreadable ({exc})"
    if r.get("run_id") != run_id:
        return f"{f}: run_id {r.get('run_id')!r}, the cell's is {run_id!r}"
    if config_hash(r.get("config", {})) != run_id:
        return f"{f}: its config hashes to {config_hash(r.get('config', {}))}, not {run_id}"
    return ""


def is_finished(path: Path, run_id: str) -> bool:
    """Whether cell `run_id` is done: a complete result.json that is this cell's (a mismatched one is rerun and
    replaced, never counted as done)."""
    return is_complete(path) and not result_mismatch(path, run_id)


def load_result(cfg: RunConfig, root: Path | None = None) -> dict | None:
    d = run_dir(cfg, root)
    return read_json(d / RESULT) if is_finished(d, cfg.run_id()) else None
