"""A stand-in for CellsJob in SLURM scale tests: the same contract (cells in, one outcome per cell out) and the same
run-once machinery (the cell's .lock, result.json as "finished", one `start` line in events.log per execution), but
no training and no torch import (harness.config and the code-identity hashing import torch: the run id is restated
here, and the code identity is computed once by the test and pickled with the job), so that hundreds of array
elements finish in seconds. The jobs import it from the checkout (their working directory)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dataclasses import dataclass

from harness.core.io import atomic_write_json, file_lock


def run_id(data: dict) -> str:
    """harness.config.config_hash, restated so that the jobs need not import harness.config (and torch with it);
    tests/test_slurm.py checks that the two agree."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _run_dir(data: dict, root: str) -> Path:
    return Path(root) / "runs" / data["benchmark"] / data["method"] / run_id(data)


def result_record(run_id: str, config: dict, code: dict, wall_seconds: float = 1) -> dict:
    """A minimal result.json of a finished cell: its run id and config (so it is not a `mismatch`) and `code` (the
    current code identity, so it is `done`, not `stale`)."""
    return {"status": "complete", "run_id": run_id, "config": config, "timings": {"wall_seconds": wall_seconds},
            "code": code}


@dataclass
class RecordingJob:
    code: dict  # harness.method.code_identity.code_identity(method) of the cells' method, from the submitting test

    def __call__(self, cells: list[dict], exec_cfg: dict, root: str) -> list[dict]:
        out = []
        for data in cells:
            d = _run_dir(data, root)
            d.mkdir(parents=True, exist_ok=True)
            with file_lock(d / ".lock", blocking=False) as got:
                if not got:
                    out.append({"run_id": d.name, "status": "busy"})
                    continue
                if (d / "result.json").exists():
                    out.append({"run_id": d.name, "status": "skipped"})
                    continue
                job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '')}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
                with open(d / "events.log", "a") as fh:
                    fh.write(f"pid={os.getpid()} job={job} start\n")
                atomic_write_json(d / "result.json", result_record(d.name, data, self.code, 0))
                out.append({"run_id": d.name, "status": "done"})
        return out
