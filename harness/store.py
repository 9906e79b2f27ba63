"""The results store: one directory per run, named by the hash of its fully resolved config.

    results/runs/<benchmark>/<method>/<run_id>/
        config.json      written when the run starts
        checkpoint.pt    after every task (removed when the run completes)
        checkpoint.epoch.pt  after every epoch: optimiser, scheduler and every RNG state too (mid-task resume)
        events.log       one line per start, resume, requeue, busy, failure, completion
        result.json      written atomically at the very end: its presence is what "finished" means; it records
                         the code that produced it (harness/method/code_identity.py): a finished cell whose code
                         changed since is `stale` — reported, kept, rerun only with --rerun-stale
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


def run_dir(cfg: RunConfig, root: Path | None = None, run_id: str | None = None) -> Path:
    """The cell's directory; pass `run_id` where it is already known (hashing a config costs ~0.1 ms)."""
    return runs_root(root) / cfg.benchmark / cfg.method / (run_id or cfg.run_id())


def is_complete(path: Path) -> bool:
    """A run is finished iff its result.json exists, parses and says so (atomic writes make partial files impossible)."""
    f = Path(path) / RESULT
    if not f.exists():
        return False
    try:
        return read_json(f).get("status") == "complete"
    except (ValueError, OSError):
        return False


def read_complete(path: Path) -> dict | None:
    """The complete result.json in run directory `path` (parsed once), None if there is none."""
    try:
        r = read_json(Path(path) / RESULT)
    except (ValueError, OSError):
        return None
    return r if isinstance(r, dict) and r.get("status") == "complete" else None


def result_stale_reason(result: dict | None) -> str:
    """Why a finished result (a parsed result.json) is stale ('' when its recorded code is the current code, or None)."""
    from harness.method.code_identity import stale_reason as reason

    return reason(result.get("code")) if result is not None else ""


def stale_reason(path: Path) -> str:
    """Why the finished run in `path` is stale ('' when its recorded code is the current code, or it is not finished)."""
    return result_stale_reason(read_complete(path))  # one parse (read_complete is None when not finished)


def mismatch_of(r: dict, run_id: str, where: Path | str = RESULT) -> str:
    """Why the parsed result `r` is not the result of cell `run_id` ('' when it is): its `run_id` or its stored
    config (rehashed) differs, e.g. a directory copied or a file edited by hand."""
    if r.get("run_id") != run_id:
        return f"{where}: run_id {r.get('run_id')!r}, the cell's is {run_id!r}"
    if config_hash(r.get("config", {})) != run_id:
        return f"{where}: its config hashes to {config_hash(r.get('config', {}))}, not {run_id}"
    return ""


def result_mismatch(path: Path, run_id: str) -> str:
    """`mismatch_of` for the complete result.json in `path` ('' when there is none or it matches)."""
    r = read_complete(path)
    return mismatch_of(r, run_id, Path(path) / RESULT) if r is not None else ""


def is_finished(path: Path, run_id: str) -> bool:
    """Whether cell `run_id` is done: a complete result.json that is this cell's (a mismatched one is rerun and
    replaced, never counted as done)."""
    r = read_complete(path)
    return r is not None and not mismatch_of(r, run_id)


def load_result(cfg: RunConfig, root: Path | None = None, run_id: str | None = None) -> dict | None:
    """The finished run's result.json if it is this cell's, None otherwise (parsed once: a report reads thousands)."""
    rid = run_id or cfg.run_id()
    r = read_complete(run_dir(cfg, root, rid))
    return r if r is not None and not mismatch_of(r, rid) else None
