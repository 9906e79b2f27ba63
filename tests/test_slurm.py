"""SLURM mode against a REAL cluster: the multi-node one of slurm/dev-cluster.sh (slurmctld, slurmd n1 + n2, slurmdbd).

If SLURM_CONF is set, its cluster is used as it is; otherwise, where sbatch exists, the session starts the dev
cluster (and stops it at the end). Where the machine cannot run SLURM the tests are skipped with the reason, which
is also emitted as a warning so that it shows in pytest's summary. Everything uses tiny cells (vit-micro-test, one
core per job), so the file takes a few minutes on 2 cores.
"""

import getpass
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
from harness.dispatch.slurm_limits import jobs_in_queue
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


# ---- limits, scale and faults on the multi-node dev cluster (slurm/dev-cluster.sh: n1, n2; MaxArraySize 101,
# ---- MaxSubmitJobs 150) --------------------------------------------------------------------------------------------


@pytest.fixture
def dev_cluster(slurm_cluster):
    """The dev cluster itself (its limits, its nodes to kill): skipped where SLURM_CONF names another cluster."""
    conf = subprocess.run([str(DEV_CLUSTER), "env"], capture_output=True, text=True).stdout.split("=", 1)[1].strip()
    if os.environ.get("SLURM_CONF") != conf:
        pytest.skip(f"needs slurm/dev-cluster.sh's cluster; SLURM_CONF names {os.environ.get('SLURM_CONF')}")
    _wait_for(lambda: jobs_in_queue() == 0, 120, "the queue to empty (earlier tests' jobs)")
    yield
    # a failed test leaves its jobs queued: cancel them so that the next test's wait is not a second failure
    subprocess.run(["scancel", "--user", getpass.getuser()], capture_output=True, timeout=60)


def _dev(*args: str) -> None:
    p = subprocess.run([str(DEV_CLUSTER), *args], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"dev-cluster.sh {' '.join(args)}: {p.stderr[-2000:]}"


def _node_of(job: str) -> str:
    out = ""
    deadline = time.time() + 60
    while not out and time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-t", "R", "-o", "%N"], capture_output=True, text=True).stdout.strip()
        time.sleep(0.5)
    assert out, f"job {job} is not running"
    return out


def _sacct_states(job: str) -> list[str]:
    """Every run of the job, requeues included (-D), oldest first."""
    out = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-j", job, "-o", "State"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_the_cluster_limits_are_read_and_a_contradicting_profile_is_refused(dev_cluster, tmp_path, results):
    from harness.dispatch.slurm import load_profile, resolve_limits

    limits = resolve_limits(load_profile(PROFILE), log=lambda _: None)
    assert (limits.max_array_size, limits.max_jobs_in_queue) == (101, 150)
    assert limits.sources == {"max_array_size": "scontrol show config: MaxArraySize=101",
                              "max_jobs_in_queue": f"sacctmgr association of {getpass.getuser()}: MaxSubmitJobs=150"}
    profile = tmp_path / "wide-profile.yaml"
    profile.write_text(yaml.safe_dump({**yaml.safe_load(Path(PROFILE).read_text()), "max_array_size": 1001}))
    grid = _grid(tmp_path, "big", ["seq-lora"], [0])
    p = clmerge("grid", grid, "--executor", "slurm", "--profile", str(profile))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"{profile}.max_array_size: 1001 is more than the cluster allows (101, from scontrol show config" in p.stderr
    assert not (results / "jobs" / "slurm" / "ledger.json").exists()  # nothing submitted


def test_the_recording_job_imports_no_torch():
    """The 250-cell test's element body stays cheap: importing it (what each array element does) must not import torch
    (about 2 s of CPU per element, 250 times)."""
    code = "import sys, tests.slurm_jobs; print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.stdout.strip() == "False", p.stdout + p.stderr


def test_250_cells_on_the_cluster_limits_run_each_exactly_once(dev_cluster, results):
    """250 one-element cells against MaxArraySize 101 and MaxSubmitJobs 150: arrays of 101 and 49, then the rest as
    room frees up, every cell run once. The element body is tests/slurm_jobs.py's RecordingJob (the cell's lock,
    result and start line, no training), so the 250 jobs take a couple of minutes on 2 cores."""
    from harness.dispatch.slurm import load_profile, submit
    from harness.dispatch.status import cell_statuses
    from harness.resolve import resolve
    from harness.method.code_identity import code_identity
    from tests.slurm_jobs import RecordingJob, run_id

    cells = [resolve("split-digits-2x5", "seq-lora", seed=s, overrides=FAST) for s in range(250)]
    assert run_id(cells[7].to_dict()) == cells[7].run_id()  # the stand-in finds the real run directories
    profile = load_profile(PROFILE)
    profile.array_parallelism, profile.submit_poll_s = 101, 2.0
    logs: list[str] = []
    t0 = time.time()
    job = RecordingJob(code_identity("seq-lora"))
    sub = submit(cells, profile, results, grid="scale", log=logs.append, wait_for_room=True, job=job)
    t_submit = time.time() - t0
    # a wave of one cell is one job, logged "submitted 1 cell as SLURM job N" (submitit submits no array of one): when
    # the queue frees a single slot the last wave is such a job, so the count takes both forms
    waves = [int(m) for m in re.findall(r"submitted (\d+) cells? as SLURM (?:array )?job", "\n".join(logs))]
    assert len(sub.submitted) == 250 and len({c.run_id() for c in sub.submitted}) == 250, logs
    assert waves[:2] == [101, 49] and sum(waves) == 250, logs
    assert any("cells wait for room in the queue (the queue holds" in line for line in logs), logs
    _wait_for(lambda: all(is_complete(run_dir(c, results)) for c in cells), 900, "all 250 cells to finish")
    print(f"\n[test_slurm] 250 cells: submitted in {len(waves)} waves {waves} in {t_submit:.1f} s, "
          f"all done after {time.time() - t0:.1f} s", file=sys.stderr)
    ledger = read_ledger(results)
    assert all(len(ledger[c.run_id()]) == 1 for c in cells)  # submitted once
    assert [_starts(c, results) for c in cells] == [1] * 250  # run once
    assert {s.state for s in cell_statuses(cells, results)} == {"done"}
    again = submit(cells, profile, results, log=lambda _: None, job=job)
    assert again.submitted == [] and set(again.skipped.values()) <= {f"done (job {e[0]['job_id']})" for e in ledger.values()}


def test_an_account_group_limit_bounds_the_submission_without_a_rejection(dev_cluster, results):
    """GrpSubmitJobs=60 on the account the jobs are charged to (shared with its other users): 100 cells are submitted
    as 60 now, the message names the account's limit, and sbatch rejects nothing (without reading the group limit,
    the first array of 100 would be refused: AssocGrpSubmitJobsLimit)."""
    from harness.dispatch.slurm import load_profile, submit
    from harness.method.code_identity import code_identity
    from harness.resolve import resolve
    from tests.slurm_jobs import RecordingJob

    def account_limit(value: int) -> None:
        subprocess.run(["sacctmgr", "-i", "modify", "account", "where", "name=clmerge", "set", f"GrpSubmitJobs={value}"],
                       capture_output=True, check=True, timeout=60)

    cells = [resolve("split-digits-2x5", "seq-lora", seed=s, overrides=FAST) for s in range(100)]
    profile = load_profile(PROFILE)
    profile.extra_sbatch = {**profile.extra_sbatch, "hold": True}  # held: nothing runs, the count stays put
    logs: list[str] = []
    account_limit(60)
    try:
        _wait_for(lambda: "GrpSubmitJobs=60(" in subprocess.run(["scontrol", "show", "assoc_mgr", "accounts=clmerge",
                  "flags=assoc"], capture_output=True, text=True).stdout, 30, "the controller to know the limit")
        sub = submit(cells, profile, results, log=logs.append, job=RecordingJob(code_identity("seq-lora")))
    finally:
        subprocess.run(["scancel", "--user", getpass.getuser()], capture_output=True, timeout=60)
        account_limit(-1)
    assert len(sub.submitted) == 60 and sub.remaining == cells[60:], logs
    assert "40 cells not submitted yet: the shared limit account clmerge: GrpSubmitJobs=60 (0 counted) left room for 60" in logs[-1], logs


def test_a_killed_node_requeues_its_job_and_the_cell_resumes_to_the_same_result(dev_cluster, tmp_path, results):
    """The node running a cell loses power (its slurmd and job processes KILLed). After SlurmdTimeout the controller
    marks it DOWN and requeues the job (NODE_FAIL); it runs on the other node, resumes from the epoch checkpoint and
    ends with the result of an uninterrupted run."""
    grid = _grid(tmp_path, "node", ["seq-lora"], [6], **{"train.epochs": 10})  # killed right after its first epoch
    (cfg,) = expand(load_grid(grid))
    d = run_dir(cfg, results)
    assert clmerge("grid", grid, "--executor", "slurm", "--profile", PROFILE).returncode == 0
    _wait_for(lambda: (d / "checkpoint.epoch.pt").exists(), 300, "the cell's first epoch checkpoint")
    job = _job_of(cfg, results)
    node = _node_of(job)
    t0 = time.time()
    _dev("kill-node", node)
    try:
        resumed = lambda: re.search(r"resumed (?:at task \d+, epoch \d+|after task \d+)", (d / "events.log").read_text())  # noqa: E731
        _wait_for(resumed, 300, "the job to be requeued on another node and to resume")
        print(f"\n[test_slurm] node {node} killed → job requeued → resumed in {time.time() - t0:.1f} s", file=sys.stderr)
        reference = _reference(cfg)  # meanwhile
        _wait_for(lambda: is_complete(d), 300, "the requeued job to finish the cell")
    finally:
        _dev("start-node", node)
    # the result is written a moment before the job ends, and sacct lags squeue by seconds
    _wait_for(lambda: _sacct_states(job)[-1:] == ["COMPLETED"], 120, "sacct to record the job completed")
    assert _sacct_states(job)[0] == "NODE_FAIL", _sacct_states(job)
    assert len(read_ledger(results)[cfg.run_id()]) == 1  # requeued by SLURM, not resubmitted
    r = json.loads((d / "result.json").read_text())
    assert r["acc_matrix"] == reference.acc and r["task_aware_matrix"] == reference.task_aware


def test_a_controller_restart_with_jobs_in_flight_leaves_no_phantom_job(dev_cluster, tmp_path, results):
    """slurmctld goes down while two cells run and they finish meanwhile. After it starts again, `status` and SLURM
    agree that they are done, no job stays "running" and holds a node, and the next submission runs."""
    grid = _grid(tmp_path, "ctld", ["seq-lora", "joint"], [7], **{"train.epochs": 6})
    cells = expand(load_grid(grid))
    assert clmerge("grid", grid, "--executor", "slurm", "--profile", PROFILE).returncode == 0
    _wait_for(lambda: all((run_dir(c, results) / "events.log").exists() for c in cells), 300, "both cells to start")
    jobs = [_job_of(c, results) for c in cells]
    _dev("stop-controller")
    try:
        _wait_for(lambda: all(is_complete(run_dir(c, results)) for c in cells), 300, "both cells to finish, controller down")
        time.sleep(5)  # the jobs' processes end and their slurmstepd try to report to the absent controller
    finally:
        _dev("start-controller")
    t0 = time.time()
    _wait_for(lambda: not any(s.active for s in job_states(jobs).values()), 120, "SLURM to see the jobs ended (no phantom)")
    print(f"\n[test_slurm] controller restarted: jobs seen ended after {time.time() - t0:.1f} s", file=sys.stderr)
    st = clmerge("status", grid)
    assert st.returncode == 0 and st.stdout.count("\ndone ") == 2, st.stdout
    nxt = _grid(tmp_path, "after", ["seq-lora"], [8])
    p = clmerge("grid", nxt, "--executor", "slurm", "--profile", PROFILE, "--wait")
    assert p.returncode == 0, p.stdout + p.stderr
    _wait_for(lambda: jobs_in_queue() == 0, 60, "the queue to empty: no job left running on a node")


def test_a_job_lost_while_the_controller_was_down_is_requeued_not_left_a_phantom(dev_cluster, tmp_path, results):
    """The controller is down when the whole cluster stops (the nodes' job processes die with it), then everything
    starts again. slurmctld's saved state still says the job runs; this machine did not reboot, so SLURM would list
    it running for ever, holding a node (measured before the fix). `dev-cluster.sh start` finds no process of it on
    its node and requeues it, as a node failure would: the cell resumes from its checkpoint and finishes."""
    grid = _grid(tmp_path, "lost", ["seq-lora"], [4], **{"train.epochs": 40})  # must outlive stop-controller + stop
    (cfg,) = expand(load_grid(grid))
    d = run_dir(cfg, results)
    assert clmerge("grid", grid, "--executor", "slurm", "--profile", PROFILE).returncode == 0
    _wait_for(lambda: (d / "checkpoint.epoch.pt").exists(), 300, "the cell's first epoch checkpoint")
    job = _job_of(cfg, results)
    _dev("stop-controller")
    _dev("stop")
    _dev("start")
    t0 = time.time()
    _wait_for(lambda: "resumed" in (d / "events.log").read_text(), 300, "the lost job to be requeued and to resume")
    print(f"\n[test_slurm] cluster restarted → lost job requeued → resumed in {time.time() - t0:.1f} s", file=sys.stderr)
    _wait_for(lambda: is_complete(d), 300, "the requeued job to finish the cell")
    _wait_for(lambda: jobs_in_queue() == 0, 60, "the queue to empty")
    _wait_for(lambda: _sacct_states(job)[-1:] == ["COMPLETED"], 60, "sacct to record the job completed")
    assert _sacct_states(job) == ["REQUEUED", "COMPLETED"], _sacct_states(job)
    assert len(read_ledger(results)[cfg.run_id()]) == 1
