"""The results store: one directory per run, named by the hash of its fully resolved config.

    results/runs/<benchmark>/<method>/<run_id>/
        config.json      written when the run starts
        checkpoint.pt    after every task (removed when the run completes)
        checkpoint.epoch.pt  after every epoch: optimiser, scheduler and every RNG state too (mid-task resume)
        events.log       one line per start, resume, requeue, busy, failure, completion
        result.json      written atomically at the very end: its presence is what "finished" means
        error.json       the last failure (traceback), if any
        .lock            held while the run executes, so two workers never run the same cell
"""

from __future__ import annotations

from pathlib import Path

from harness.config import RunConfig
from harness.core.io import read_json
from harness.core.paths import results_dir

RESULT = "result.json"


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


def load_result(cfg: RunConfig, root: Path | None = None, run_id: str | None = None) -> dict | None:
    """The finished run's result.json, None if it has none (parsed once: a report reads thousands)."""
    try:
        r = read_json(run_dir(cfg, root, run_id) / RESULT)
    except (ValueError, OSError):
        return None
    return r if isinstance(r, dict) and r.get("status") == "complete" else None
