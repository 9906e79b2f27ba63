"""SLURM dispatch: a grid's unfinished cells as submitit job arrays that fit the cluster, a ledger of submissions.

    profile (slurm/NAME.yaml) ──► SlurmExecutor ──► arrays of ≤ max_array_size elements, `pack` cells per element
                                                    (CellsJob, Checkpointable), in waves under max_jobs_in_queue
    results/jobs/slurm/ledger.json   run_id → [{job_id, submitted, stdout, stderr, grid}], newest last
    results/jobs/slurm/<job id>/     submitit's pickles and the job's stdout/stderr logs

Never running a cell twice takes two locks. Each submission wave holds `results/jobs/slurm/.ledger.lock` while it
looks at the queue and submits, so a second (or rerun, or concurrent) submission of the same grid sees the first
one's jobs and skips their cells: a submitter can be stopped and rerun at any time. A job
takes the cell's own `.lock` (harness/train/run.py) while it runs, so a cell started twice anyway (e.g. by a local run)
runs once; the other job reports it "busy" and ends normally.

Preemption and time limits: SLURM sends USR2 `signal_delay_s` before the limit (or on preemption); submitit calls
CellsJob.checkpoint() and requeues the job; the cell resumes from its last epoch checkpoint. A job that dies
without a result (scancel, OOM) shows as failed in `clmerge status` — from squeue while SLURM still
lists the job, from sacct after — never as an endless "running". A node failure requeues the job (NODE_FAIL) and
the cell resumes on another node.
"""

from __future__ import annotations

import datetime
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.config import ExecConfig, RunConfig
from harness.core.errors import ConfigError
from harness.core.paths import project_root, results_dir
from harness.core.schema import load_yaml
from harness.dispatch.executors import CellsJob
from harness.dispatch.slurm_limits import Limits, ask_shared_room, cluster_limits, combine, jobs_in_queue, wave_sizes
from harness.dispatch import slurm_queue
from harness.dispatch.slurm_queue import QueueError, _record, ledger_lock, slurm_dir
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
    # Limits below the cluster's own (read from scontrol/sacctmgr; harness/dispatch/slurm_limits.py); None: the cluster's
    max_array_size: int | None = None  # elements per job array
    max_jobs_in_queue: int | None = None  # this user's jobs + array elements pending or running at once
    pack: int = 1  # cells run one after another in each array element (tiny cells: amortise job start-up)
    submit_poll_s: float = 30.0  # with --wait: how often a submitter waiting for room in the queue looks again
    description: str = ""
    file: str = ""

    def validate(self, where: str) -> None:
        for key in ("cpus", "time_min", "array_parallelism", "pack"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("gpus", "signal_delay_s", "max_requeues"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("max_array_size", "max_jobs_in_queue"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1 (or null: the cluster's limit), got {getattr(self, key)}")
        if self.submit_poll_s <= 0:
            raise ConfigError(f"{where}.submit_poll_s: must be > 0, got {self.submit_poll_s}")
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
    submitted: list[RunConfig]  # in the arrays just submitted
    job_ids: dict[str, str]  # run_id → job id
    skipped: dict[str, str]  # run_id → why (finished, queued as job X, running elsewhere, not failed)
    arrays: list[str] = field(default_factory=list)  # the job ids of the arrays submitted, in order
    remaining: list[RunConfig] = field(default_factory=list)  # not submitted: no room in the queue (rerun later)


def resolve_limits(profile: SlurmProfile, log: Callable[[str], None] = print) -> Limits:
    """The cluster's array and queue limits, lowered by the profile's (an override above the cluster's: ConfigError)."""
    try:
        array, queue, sources = cluster_limits(profile.account, profile.qos, log)
    except (QueueError, FileNotFoundError) as exc:
        raise ConfigError(f"cannot read the cluster's limits (scontrol show config): {exc}; nothing was submitted") from exc
    return combine(array, queue, sources, profile.max_array_size, profile.max_jobs_in_queue, profile.file or "profile")


def pack_cells(cells: list[RunConfig], per_element: int) -> list[list[RunConfig]]:
    """Cells in groups of at most `per_element`, consecutive in grid order (one array element runs one group)."""
    return [cells[i : i + per_element] for i in range(0, len(cells), per_element)]


def _cells_to_submit(statuses, retry_failed: bool, already: dict[str, str],
                     rerun_stale: bool = False) -> tuple[list[RunConfig], dict[str, str]]:
    todo, skipped = [], {}
    for st in statuses:
        rid = st.cfg.run_id()
        if rid in already:  # this submitter's own earlier wave
            continue
        if (st.state == "failed" or (st.state in TO_RUN and not retry_failed)
                or (st.state == "stale" and rerun_stale)):
            todo.append(st.cfg)
        elif st.state in TO_RUN:
            skipped[rid] = f"not failed ({'never submitted' if st.state == 'todo' else st.state})"
        else:
            skipped[rid] = st.state + (f" (job {st.job_id})" if st.job_id else "")
    return todo, skipped


def submit(
    cells: list[RunConfig],
    profile: SlurmProfile,
    root: Path | None = None,
    grid: str = "",
    retry_failed: bool = False,
    log: Callable[[str], None] = print,
    wait_for_room: bool = False,
    limits: Limits | None = None,
    sleep: Callable[[float], None] = time.sleep,
    job: Callable[[list[dict], dict, str], list[dict]] | None = None,
    rerun_stale: bool = False,  # also submit finished cells whose code changed since (harness/method/code_identity.py)
) -> Submission:
    """Submit the cells that are not finished and not already queued/running, as job arrays that fit the cluster.

    Each wave (under the ledger lock) looks at the cells and the queue again, then submits as many arrays of at most
    `max_array_size` elements (`pack` cells each) as the free room under `max_jobs_in_queue` allows, recording each
    array in the ledger as soon as sbatch accepts it. What does not fit waits for the next wave (`wait_for_room`)
    or for the next run of the same command: the submitter can be stopped and rerun at any time, since cells
    already queued are skipped. With `retry_failed`, only cells whose last job ended without a result (or whose
    run failed) are submitted. `job`: the callable each element runs (default CellsJob(); tests give a cheaper one
    with the same contract)."""

    root = Path(root or results_dir()).resolve()
    limits = limits or resolve_limits(profile, log)
    out = Submission([], {}, {})
    first_wave = True
    while True:
        with ledger_lock(root):
            todo, skipped = _cells_to_submit(cell_statuses(cells, root), retry_failed, out.job_ids, rerun_stale)
            if first_wave:
                out.skipped, first_wave = skipped, False
            if not todo:
                out.remaining = []
                return out
            try:
                in_queue = jobs_in_queue() if limits.max_jobs_in_queue is not None else 0
            except (QueueError, FileNotFoundError) as exc:
                raise ConfigError(f"SLURM does not answer ({exc}); {len(out.submitted)} cells were submitted and recorded before, "
                                  f"{len(todo)} not: rerun the same command when it answers (queued cells are skipped)") from exc
            room = None if limits.max_jobs_in_queue is None else limits.max_jobs_in_queue - in_queue
            why = f"the queue holds {in_queue} of at most {limits.max_jobs_in_queue} jobs ({limits.sources.get('max_jobs_in_queue', '')})"
            shared, binding = ask_shared_room(profile.account, profile.qos)  # group limits: others' jobs count too
            if shared is not None and (room is None or shared < room):
                room, why = shared, f"the shared limit {binding} left room for {shared}"
            elements = pack_cells(todo, profile.pack)
            sizes = wave_sizes(len(elements), limits.array_cap(), room)
            for size in sizes:
                part, elements = elements[:size], elements[size:]
                _submit_array(part, profile, root, grid, out, limits, log, job or CellsJob(), rerun_stale, sleep)
            out.remaining = [c for e in elements for c in e]
        if not out.remaining:
            return out
        if not wait_for_room:
            log(f"{len(out.remaining)} cells not submitted yet: {why}. Rerun the same command later to submit them "
                f"(cells already queued are skipped), or add --wait to keep submitting as room frees up")
            return out
        log(f"{len(out.remaining)} cells wait for room in the queue ({why}); looking again in {profile.submit_poll_s:g} s")
        sleep(profile.submit_poll_s)


def _submit_array(
    elements: list[list[RunConfig]], profile: SlurmProfile, root: Path, grid: str, out: Submission, limits: Limits,
    log: Callable[[str], None], job: Callable, rerun_stale: bool = False, sleep: Callable[[float], None] = time.sleep,
) -> None:
    """One sbatch: `elements` as one array (one job if a single element), recorded in the ledger at once."""
    ex = make_executor(profile, slurm_dir(root) / "%j")
    # a token in the job comment finds this array's jobs in the queue if sbatch fails after the controller took them
    own = profile.extra_sbatch.get("comment")  # a profile's own comment is kept in front of the token
    comment = (f"{own} " if own else "") + SUBMISSION_COMMENT + uuid.uuid4().hex[:16]
    ex.update_parameters(comment=comment,
                         additional_parameters={k: v for k, v in profile.extra_sbatch.items() if k != "comment"})
    exec_cfg = asdict(ExecConfig(device="auto", threads=profile.cpus, progress=False, rerun_stale=rerun_stale))
    n = len(elements)
    n_cells = sum(len(e) for e in elements)
    try:
        jobs = ex.map_array(job, [[c.to_dict() for c in e] for e in elements], [exec_cfg] * n, [str(root)] * n)
    except Exception as exc:  # sbatch refused (submitit raises its own error types with sbatch's stderr)
        reason = " ".join(str(exc).split())[-600:]
        raise ConfigError(
            f"sbatch failed for an array of {n} elements ({n_cells} cells): {reason}. {_orphans(comment, reason, sleep)} "
            f"{len(out.submitted)} cells submitted before it are recorded in the ledger and stay queued, nothing was "
            f"submitted twice; fix the cause (limits used: {limits.describe()}; lower max_array_size / "
            f"max_jobs_in_queue in the profile if the cluster's are lower) and rerun the same command"
        ) from exc
    now = datetime.datetime.now().isoformat(timespec="seconds")
    entries = {}
    for element, job in zip(elements, jobs):
        for c in element:
            entries[c.run_id()] = {"job_id": job.job_id, "submitted": now, "grid": grid,
                                   "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
    _record(root, entries)
    first = jobs[0].job_id.split("_")[0]
    out.arrays.append(first)
    for element in elements:
        out.submitted.extend(element)
    out.job_ids.update({rid: e["job_id"] for rid, e in entries.items()})
    packed = f", {profile.pack} cells per element" if profile.pack > 1 else ""
    if n == 1:  # submitit submits a single job, not an array of one
        log(f"submitted {n_cells} cell{'s' if n_cells > 1 else ''} as SLURM job {first}")
    else:
        log(f"submitted {n_cells} cells as SLURM array job {first} ({n} elements{packed}; at most {profile.array_parallelism} at a time)")


SUBMISSION_COMMENT = "clmerge-submission:"


def _orphans(comment: str, reason: str, sleep: Callable[[float], None]) -> str:
    """After a failed sbatch: the jobs the controller accepted anyway (a reply lost to a timeout: "Socket timed out")
    cannot run (submitit never handed them their cells) and would make a rerun submit the cells twice, so they are
    found by `comment` and cancelled. Returns what was done, for the error message."""
    try:
        found = slurm_queue.jobs_with_comment(comment)
        if not found and "timed out" in reason.lower():  # a busy controller may register the job a moment later
            sleep(5.0)
            found = slurm_queue.jobs_with_comment(comment)
        slurm_queue.cancel(found)
    except (QueueError, FileNotFoundError) as exc:
        return (f"Whether the controller queued some of its jobs anyway could not be checked ({exc}): before "
                f"rerunning, cancel the jobs whose comment is {comment} (squeue -u $USER -o '%i %k').")
    if found:
        return (f"The controller had queued {len(found)} of its jobs anyway (found by their comment {comment}); "
                f"they could not run their cells and were cancelled.")
    return "No job of it is in the queue."


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
