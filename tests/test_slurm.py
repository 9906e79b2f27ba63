"""SLURM mode against a REAL cluster: the single-node one of slurm/dev-cluster.sh (slurmctld, slurmd, slurmdbd).

If SLURM_CONF is set, its cluster is used as it is; otherwise, where sbatch exists, the session starts the dev
cluster (and stops it at the end). Where the machine cannot run SLURM the tests are skipped with the reason, which
is also emitted as a warning so that it shows in pytest's summary. Everything uses tiny cells (vit-micro-test, one
core per job), so the file takes a few minutes on 2 cores.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from harness.config import ExecConfig
from harness.core.paths import project_root
from harness.dispatch.executors import dispatch
from harness.dispatch.grid import expand, load_grid
from harness.dispatch.slurm_queue import slurm_available
from harness.dispatch.slurm_queue import job_states, read_ledger
from harness.report.grid_report import report
from harness.store import is_complete, run_dir
from harness.train.setup import build
from harness.train.trainer import run_tasks
from tests.conftest import FAST

pytestmark = pytest.mark.slow
DEV_CLUSTER = project_root() / "slurm" / "dev-cluster.sh"
PROFILE = str(project_root() / "slurm" / "dev-cluster.yaml")


def _skip(reason: str):
    warnings.warn(f"SLURM integration tests skipped: {reason}", pytest.PytestWarning)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SLURM cluster that answers: the one SLURM_CONF names, or the dev cluster started (and stopped) here."""
    if not shutil.which("sbatch"):
        _skip("sbatch not found: SLURM is not installed on this machine (slurm/dev-cluster.sh start installs it)")
    started = False
    if not os.environ.get("SLURM_CONF"):
        conf = subprocess.run([str(DEV_CLUSTER), "env"], capture_output=True, text=True).stdout.split("=", 1)[1].strip()
        up = subprocess.run([str(DEV_CLUSTER), "status"], capture_output=True, text=True).returncode == 0
        if not up:
            t0 = time.time()
            p = subprocess.run([str(DEV_CLUSTER), "start"], capture_output=True, text=True, timeout=900)
            if p.returncode != 0:
                _skip(f"the dev cluster did not start (slurm/dev-cluster.sh start, exit {p.returncode}): {p.stderr[-1500:]}")
            started = True
            print(f"\n[test_slurm] started the dev cluster in {time.time() - t0:.1f} s", file=sys.stderr)
        os.environ["SLURM_CONF"] = conf
    why = slurm_available()
    if why:
        _skip(why)
    yield
    if started:
        subprocess.run([str(DEV_CLUSTER), "stop"], capture_output=True, timeout=120)
        os.environ.pop("SLURM_CONF", None)


def clmerge(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=timeout)
    return p


def _grid(tmp_path: Path, name: str, methods: list[str], seeds: list[int], **overrides) -> str:
    data = {"name": name, "benchmarks": ["split-digits-2x5"], "methods": methods, "seeds": seeds, "overrides": {**FAST, **overrides}}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def _job_of(cfg, results: Path) -> str:
    return read_ledger(results)[cfg.run_id()][-1]["job_id"]


def _reference(cfg):
    """The uninterrupted run in this process, single-threaded like the SLURM jobs (cpus: 1 in the profile)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_tasks(build(cfg, ExecConfig(progress=False)), ExecConfig(progress=False))
    finally:
        torch.set_num_threads(before)


def _starts(cfg, results: Path) -> int:
    f = run_dir(cfg, results) / "events.log"
    return len(re.findall(r" start$", f.read_text(), re.M)) if f.exists() else 0


def test_array_completes_and_report_equals_local(slurm_cluster, tmp_path, results):
    grid = _grid(tmp_path, "arr", ["seq-lora", "joint"], [0, 1])
    cells = expand(load_grid(grid))
    p = clmerge("grid", grid, "--executor", "slurm", "--profile", PROFILE, "--wait", "--report")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "submitted 4 cells as SLURM array job" in p.stdout
    jobs = [_job_of(c, results) for c in cells]
    assert len({j.split("_")[0] for j in jobs}) == 1 and len(set(jobs)) == 4  # one array, one element per cell
    md_slurm = p.stdout[p.stdout.index("### arr") : p.stdout.index("markdown: ")].strip()

    local_root = tmp_path / "local"  # same grid, local executor, one thread per run as in the SLURM jobs
    assert {o.status for o in dispatch(cells, "local", local_root, max_parallel=2, log=lambda _: None)} == {"done"}
    md_local, _ = report("arr", cells, local_root, grid=load_grid(grid), against=["seq-lora"])  # the CLI's default
    assert md_slurm == md_local.strip()
    for c in cells:  # stronger than the rounded table: the accuracy matrices are identical
        a = json.loads((run_dir(c, results) / "result.json").read_text())
        b = json.loads((run_dir(c, local_root) / "result.json").read_text())
        assert a["acc_matrix"] == b["acc_matrix"] and a["task_aware_matrix"] == b["task_aware_matrix"]

    again = clmerge("grid", grid, "--executor", "slurm", "--profile", PROFILE)
    assert again.returncode == 0 and "not submitted: 4 done" in again.stdout and "submitted 4" not in again.stdout
    st = clmerge("status", grid)
    assert st.returncode == 0 and st.stdout.count("\ndone ") == 4, st.stdout


def test_pre_timeout_signal_and_external_requeue_resume_and_match(slurm_cluster, tmp_path, results):
    """USR2 mid-task (what SLURM sends before the time limit): submitit's checkpoint() requeues the job, which resumes
    from the epoch checkpoint. Then `scontrol requeue` (as on preemption: no signal handler, just killed and
    restarted): the job resumes from disk again. The result equals an uninterrupted run's."""
    grid = _grid(tmp_path, "sig", ["seq-lora"], [5], **{"train.epochs": 60})  # long enough to be interrupted twice
    (cfg,) = expand(load_grid(grid))
    d = run_dir(cfg, results)
    assert clmerge("grid", grid, "--executor", "slurm", "--profile", PROFILE).returncode == 0
    _wait_for(lambda: (d / "checkpoint.epoch.pt").exists(), 300, "the cell's first epoch checkpoint")
    job = _job_of(cfg, results)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    t0 = time.time()
    # restarts that resumed: one per process (pid), whether it logged one resume line or two (a restart after a task
    # boundary resumes after that task from checkpoint.pt, then mid-task from checkpoint.epoch.pt)
    resumes = lambda: len(set(re.findall(r"pid=(\d+) job=\S+ resumed (?:at task \d+, epoch \d+|after task \d+)",  # noqa: E731
                                         (d / "events.log").read_text())))
    _wait_for(lambda: resumes() == 1, 300, "the signalled job to be requeued and to resume")
    print(f"\n[test_slurm] USR2 → requeued → resumed in {time.time() - t0:.1f} s", file=sys.stderr)
    subprocess.run(["scontrol", "requeue", job], check=True)
    t0 = time.time()
    reference = _reference(cfg)  # meanwhile
    _wait_for(lambda: is_complete(d), 300, "the externally requeued job to finish the cell")
    print(f"[test_slurm] scontrol requeue → finished in {time.time() - t0:.1f} s", file=sys.stderr)
    events = (d / "events.log").read_text()
    assert events.count("interrupted: job requeued") == 1 and resumes() == 2 and _starts(cfg, results) == 3, events
    assert f"job={job} " in events and read_ledger(results)[cfg.run_id()][-1]["job_id"] == job  # nothing resubmitted
    r = json.loads((d / "result.json").read_text())
    assert r["acc_matrix"] == reference.acc and r["task_aware_matrix"] == reference.task_aware


def test_scancel_is_reported_failed_within_a_minute_and_retry_completes(slurm_cluster, tmp_path, results):
    grid = _grid(tmp_path, "kill", ["seq-lora"], [8], **{"train.epochs": 60})  # long enough to be killed mid-run
    (cfg,) = expand(load_grid(grid))
    d = run_dir(cfg, results)
    assert clmerge("grid", grid, "--executor", "slurm", "--profile", PROFILE).returncode == 0
    _wait_for(lambda: (d / "checkpoint.epoch.pt").exists(), 300, "the cell's first epoch checkpoint")
    job = _job_of(cfg, results)
    subprocess.run(["scancel", job], check=True)
    t0 = time.time()
    while True:
        st = clmerge("status", grid)
        if re.search(r"^failed ", st.stdout, re.M):
            break
        assert time.time() - t0 < 60, f"not reported failed within a minute:\n{st.stdout}"
        time.sleep(2)
    print(f"\n[test_slurm] scancel → status 'failed' after {time.time() - t0:.1f} s", file=sys.stderr)
    assert st.returncode == 1 and f"failed   {job}" in st.stdout and "CANCELLED" in st.stdout, st.stdout
    assert not is_complete(d)

    retry = clmerge("grid", grid, "--executor", "slurm", "--profile", PROFILE, "--retry-failed", "--wait")
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert is_complete(d) and _job_of(cfg, results) != job
    st = clmerge("status", grid)
    assert st.returncode == 0 and re.search(r"^done ", st.stdout, re.M), st.stdout


def test_concurrent_submissions_run_each_cell_once(slurm_cluster, tmp_path, results):
    grid = _grid(tmp_path, "twice", ["seq-lora", "joint"], [3])
    cells = expand(load_grid(grid))
    args = [sys.executable, "-m", "harness.cli", "grid", grid, "--executor", "slurm", "--profile", PROFILE, "--wait"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("submitted 2 cells" in o for o in outs) == 1, outs  # the other one found them queued
    ledger = read_ledger(results)
    for c in cells:
        assert is_complete(run_dir(c, results))
        assert len(ledger[c.run_id()]) == 1 and _starts(c, results) == 1


def test_jobs_that_bypass_the_ledger_still_run_a_cell_once(slurm_cluster, tmp_path, results):
    """Two array jobs for the same cell (as if two users submitted without the ledger): the cell's lock lets one
    run it; the other reports it busy or finished and ends normally."""
    from harness.dispatch.executors import CellsJob
    from harness.dispatch.slurm import load_profile, make_executor

    grid = _grid(tmp_path, "lock", ["seq-lora"], [9])
    (cfg,) = expand(load_grid(grid))
    ex = make_executor(load_profile(PROFILE), results / "jobs" / "slurm" / "%j")
    args = [[cfg.to_dict()], {"threads": 1, "progress": False, "device": "cpu"}, str(results)]
    jobs = ex.map_array(CellsJob(), [args[0]] * 2, [args[1]] * 2, [args[2]] * 2)
    outcomes = sorted(o["status"] for j in jobs for o in j.result())
    assert outcomes in (["busy", "done"], ["done", "skipped"]), outcomes
    assert _starts(cfg, results) == 1 and is_complete(run_dir(cfg, results))
    ids = [j.job_id for j in jobs]  # the result pickle comes a moment before SLURM marks the job finished
    _wait_for(lambda: not any(s.active for s in job_states(ids).values()), 60, "both jobs to leave the queue")
    assert {s.state for s in job_states(ids).values()} == {"COMPLETED"}  # "busy" is not a job failure
