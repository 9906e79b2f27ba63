"""SLURM dispatch: a grid's unfinished cells as one submitit job array, a ledger of submissions, queue states.

    profile (slurm/NAME.yaml) ──► SlurmExecutor ──► one array, one cell per element (CellsJob, Checkpointable)
    results/jobs/slurm/ledger.json   run_id → [{job_id, submitted, stdout, stderr, grid}], newest last
    results/jobs/slurm/<job id>/     submitit's pickles and the job's stdout/stderr logs

Never running a cell twice takes two locks. Submissions hold `results/jobs/slurm/.ledger.lock` while they look at the
queue and submit, so a second submission of the same grid sees the first one's jobs and skips their cells. A job
takes the cell's own `.lock` (harness/train/run.py) while it runs, so a cell started twice anyway (e.g. by a local run)
runs once; the other job reports it "busy" and ends normally.

Preemption and time limits: SLURM sends USR2 `signal_delay_s` before the limit (or on preemption); submitit calls
CellsJob.checkpoint() and requeues the job; the cell resumes from its last epoch checkpoint. A job that dies
without a result (scancel, OOM, node failure) shows as failed in `clmerge status` — from squeue while SLURM still
lists the job, from sacct after — never as an endless "running".
"""

from __future__ import annotations

import datetime
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.config import ExecConfig, RunConfig
from harness.core.errors import ConfigError
from harness.core.paths import project_root, results_dir
from harness.core.schema import load_yaml
from harness.dispatch.executors import CellsJob
from harness.dispatch.slurm_queue import _record, ledger_lock, slurm_dir
from harness.dispatch.status import TO_RUN, cell_statuses


@dataclass
class SlurmProfile:
    """Where and how jobs run on a SLURM cluster; one YAML file in slurm/ (see slurm/example.yaml)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus: int = 0  # per job (= per cell)
    cpus: int = 4  # per job; also the torch threads of the run
    mem_gb: float | None = None  # per job; None: the cluster's default
    time_min: int = 60  # time limit per job; a cell that needs longer is checkpointed and requeued
    array_parallelism: int = 32  # array elements running at once
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint + requeue
    max_requeues: int = 5  # how many time-limit requeues a job may use (preemptions do not count)
    setup: list[str] = field(default_factory=list)  # shell lines run in the job before Python (modules, venv)
    extra_sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch flag, e.g. {exclude: "n[1-3]"}
    description: str = ""
    file: str = ""

    def validate(self, where: str) -> None:
        for key in ("cpus", "time_min", "array_parallelism"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("gpus", "signal_delay_s", "max_requeues"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ConfigError(f"{where}.mem_gb: must be > 0, got {self.mem_gb}")
        if self.signal_delay_s >= self.time_min * 60:
            raise ConfigError(f"{where}.signal_delay_s: {self.signal_delay_s} s is not shorter than time_min")


def load_profile(name_or_path: str) -> SlurmProfile:
    """A profile by path, or by name in the checkout's slurm/ directory."""
    path = Path(name_or_path)
    if not path.exists():
        path = project_root() / "slurm" / f"{name_or_path}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in (project_root() / "slurm").glob("*.yaml"))
        raise ConfigError(f"SLURM profile {name_or_path!r} is neither a file nor a name in slurm/; available: {', '.join(names)}")
    return load_yaml(SlurmProfile, path)


def sbatch_parameters(profile: SlurmProfile) -> dict[str, Any]:
    """The profile as submitit SlurmExecutor parameters (which become the #SBATCH lines)."""
    params: dict[str, Any] = {
        "job_name": "clmerge",
        "time": profile.time_min,
        "cpus_per_task": profile.cpus,
        "array_parallelism": profile.array_parallelism,
        "signal_delay_s": profile.signal_delay_s,
        "setup": list(profile.setup),
        "additional_parameters": dict(profile.extra_sbatch),
    }
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(profile, key):
            params[key] = getattr(profile, key)
    if profile.gpus:
        params["gpus_per_node"] = profile.gpus
    if profile.mem_gb is not None:
        params["mem"] = f"{int(profile.mem_gb * 1024)}M"
    return params


def make_executor(profile: SlurmProfile, folder: Path):
    """A submitit SlurmExecutor for `profile` (explicit, not AutoExecutor: the cluster is never guessed)."""
    import submitit

    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_requeues)
    ex.update_parameters(**sbatch_parameters(profile))
    return ex


# ---- submission ----------------------------------------------------------------------------------------------------


@dataclass
class Submission:
    submitted: list[RunConfig]  # in the array just submitted
    job_ids: dict[str, str]  # run_id → job id
    skipped: dict[str, str]  # run_id → why (finished, queued as job X, running elsewhere, not failed)


def submit(
    cells: list[RunConfig],
    profile: SlurmProfile,
    root: Path | None = None,
    grid: str = "",
    retry_failed: bool = False,
    log: Callable[[str], None] = print,
) -> Submission:
    """Submit the cells that are not finished and not already queued/running as ONE job array.

    With `retry_failed`, only cells whose last job ended without a result (or whose run failed) are submitted."""

    root = Path(root or results_dir()).resolve()
    with ledger_lock(root):
        statuses = cell_statuses(cells, root)
        todo, skipped = [], {}
        for st in statuses:
            rid = st.cfg.run_id()
            if st.state == "failed" or (st.state in TO_RUN and not retry_failed):
                todo.append(st.cfg)
            elif st.state in TO_RUN:
                skipped[rid] = f"not failed ({'never submitted' if st.state == 'todo' else st.state})"
            else:
                skipped[rid] = st.state + (f" (job {st.job_id})" if st.job_id else "")
        if not todo:
            return Submission([], {}, skipped)
        ex = make_executor(profile, slurm_dir(root) / "%j")
        exec_cfg = asdict(ExecConfig(device="auto", threads=profile.cpus, progress=False))
        n = len(todo)
        jobs = ex.map_array(CellsJob(), [[c.to_dict()] for c in todo], [exec_cfg] * n, [str(root)] * n)
        now = datetime.datetime.now().isoformat(timespec="seconds")
        entries = {
            c.run_id(): {"job_id": j.job_id, "submitted": now, "grid": grid, "stdout": str(j.paths.stdout), "stderr": str(j.paths.stderr)}
            for c, j in zip(todo, jobs)
        }
        _record(root, entries)
    first = jobs[0].job_id.split("_")[0]
    if n == 1:  # submitit submits a single job, not an array of one
        log(f"submitted 1 cell as SLURM job {first}")
    else:
        log(f"submitted {n} cells as SLURM array job {first} (at most {profile.array_parallelism} at a time)")
    return Submission(todo, {rid: e["job_id"] for rid, e in entries.items()}, skipped)


def wait(
    cells: list[RunConfig], root: Path | None = None, poll_s: float = 5.0, log: Callable[[str], None] = print,
    unknown_for_s: float = 300.0,
):
    """Block until none of `cells` is pending or running; log each change of state. Returns the final statuses.

    A controller that does not answer (state "unknown") is waited out for `unknown_for_s`, then given up on."""

    seen: dict[str, str] = {}
    unknown_since: float | None = None
    while True:
        statuses = cell_statuses(cells, root)
        for st in statuses:
            rid = st.cfg.run_id()
            if seen.get(rid) != st.state:
                seen[rid] = st.state
                log(f"  [{st.state}] {st.cfg.benchmark} × {st.cfg.method} × seed {st.cfg.seed}" + (f" (job {st.job_id})" if st.job_id else ""))
        if any(st.state == "unknown" for st in statuses):
            unknown_since = unknown_since or time.time()
        else:
            unknown_since = None
        waiting = any(st.state in ("pending", "running") for st in statuses)
        if not waiting and (unknown_since is None or time.time() - unknown_since > unknown_for_s):
            return statuses
        time.sleep(poll_s)
