"""SLURM mode without a cluster: profiles, the sbatch script they make, `status` decisions and what a submission
skips — with squeue/sacct and the executor replaced by fakes. The real-cluster tests are in tests/test_slurm.py."""

import fcntl
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.core.errors import ConfigError
from harness.core.io import atomic_write_json
from harness.dispatch import slurm
from harness.dispatch import slurm_queue
from harness.dispatch import status
from harness.dispatch.slurm import load_profile, sbatch_parameters, submit
from harness.dispatch.slurm_limits import Limits
from harness.dispatch.slurm_queue import JobState, QueueError, read_ledger
from harness.dispatch.status import cell_statuses, format_statuses
from tests.fakes import finished_result
from harness.resolve import resolve
from harness.store import run_dir
from tests.conftest import FAST


def test_shipped_profiles_load():
    ex, dev = load_profile("example"), load_profile("dev-cluster")
    assert ex.gpus == 1 and ex.partition == "gpu" and ex.setup and ex.extra_sbatch == {"mail-type": "FAIL"}
    assert dev.partition == "debug" and dev.cpus == 1


@pytest.mark.parametrize(
    "data, message",
    [
        ({"partiton": "gpu"}, "unknown key 'partiton'; valid keys: partition, account"),
        ({"cpus": 0}, "cpus: must be >= 1"),
        ({"time_min": "2h"}, "time_min: expected an integer"),
        ({"time_min": 2, "signal_delay_s": 120}, "signal_delay_s: 120 s is not shorter than time_min"),
        ({"extra_sbatch": ["exclusive"]}, "extra_sbatch: expected a mapping"),
    ],
)
def test_bad_profiles_say_what_is_wrong(tmp_path, data, message):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_profile(str(p))
    with pytest.raises(ConfigError, match="neither a file nor a name in slurm/; available: .*dev-cluster"):
        load_profile("no-such-profile")


def test_sbatch_script_of_the_example_profile(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="CMD", folder=tmp_path / "%j", map_count=40, **sbatch_parameters(load_profile("example")))
    for line in ["--array=0-39%16", "--partition=gpu", "--account=my-project", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--mem=32768M", "--time=240", "--signal=USR2@180", "--mail-type=FAIL", "module load cuda/12.4"]:
        assert line in text, line


# ---- status and submission with fake queue / executor ---------------------------------------------------------------


def _cells(n: int):
    return [resolve("split-digits-2x5", "seq-lora", seed=s, overrides=FAST) for s in range(n)]


def _ledger(root: Path, jobs: dict[str, str]) -> None:
    cells = {}
    for rid, jid in jobs.items():
        log = root / "jobs" / "slurm" / jid / f"{jid}_0_log.err"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(f"line {i}\n" for i in range(30)) + f"slurmstepd: *** JOB {jid} CANCELLED ***\n")
        cells[rid] = [{"job_id": jid, "submitted": "t", "grid": "g", "stdout": str(log).replace(".err", ".out"), "stderr": str(log)}]
    atomic_write_json(root / "jobs" / "slurm" / "ledger.json", {"cells": cells})


def test_status_decisions(results, monkeypatch):
    cells = _cells(8)
    done, running, requeued, cancelled, gone, errored, todo, locked = cells
    atomic_write_json(run_dir(done, results) / "result.json", finished_result(done, 75))  # current code
    atomic_write_json(run_dir(errored, results) / "error.json", {"error": "TrainingDiverged: loss is nan"})
    ids = {c.run_id(): f"7_{i}" for i, c in enumerate(cells) if c not in (todo, locked)}
    _ledger(results, ids)
    queue = {"7_0": JobState("COMPLETED"), "7_1": JobState("RUNNING", "1:02"), "7_2": JobState("REQUEUED", "0:00", "BeginTime"),
             "7_3": JobState("CANCELLED", "00:00:09"), "7_4": JobState("GONE"), "7_5": JobState("COMPLETED", "00:00:03")}
    monkeypatch.setattr(status, "job_states", lambda job_ids: {j: queue[j] for j in job_ids})
    lock = run_dir(locked, results) / ".lock"  # e.g. a local run of the same cell
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        st = {s.cfg.run_id(): s for s in cell_statuses(cells, results, tail_lines=3)}
    got = [st[c.run_id()].state for c in cells]
    assert got == ["done", "running", "pending", "failed", "failed", "failed", "todo", "running"]
    assert st[done.run_id()].elapsed == "0:01:15" and st[running.run_id()].elapsed == "1:02"
    c = st[cancelled.run_id()]
    assert c.detail == "job CANCELLED" and c.log_tail == ["line 28", "line 29", "slurmstepd: *** JOB 7_3 CANCELLED ***"]
    assert st[errored.run_id()].detail == "job COMPLETED (ended without a result); TrainingDiverged: loss is nan"
    text = format_statuses(list(st.values()))
    assert "    slurmstepd: *** JOB 7_3 CANCELLED ***" in text and "1 done, 2 running, 1 pending, 3 failed, 1 todo — 8 cells" in text

    def no_slurm(job_ids):
        raise QueueError("squeue failed")

    monkeypatch.setattr(status, "job_states", no_slurm)
    assert {s.state for s in cell_statuses(cells[1:6], results)} == {"unknown"}  # never "failed" on a guess


class FakeJob:
    def __init__(self, folder: Path, job_id: str):
        self.job_id = job_id
        self.paths = type("P", (), {"stdout": folder / f"{job_id}.out", "stderr": folder / f"{job_id}.err"})()


class FakeExecutor:
    submitted: list[list] = []

    def __init__(self, folder: Path):
        self.folder = folder

    def update_parameters(self, **params):  # the submission's comment (its token), as submitit takes it
        self.params = params

    def map_array(self, fn, cells, *rest):
        FakeExecutor.submitted.append([c[0]["seed"] for c in cells])
        return [FakeJob(self.folder, f"9_{i}") for i in range(len(cells))]


def test_submit_skips_finished_queued_and_running_cells(results, monkeypatch):
    cells = _cells(4)
    done, queued, failed, new = cells
    atomic_write_json(run_dir(done, results) / "result.json", finished_result(done))
    _ledger(results, {queued.run_id(): "5_1", failed.run_id(): "5_2"})
    queue = {"5_1": JobState("PENDING"), "5_2": JobState("OUT_OF_MEMORY")}
    monkeypatch.setattr(status, "job_states", lambda ids: {j: queue.get(j, JobState("PENDING")) for j in ids})
    monkeypatch.setattr(slurm, "make_executor", lambda profile, folder: FakeExecutor(folder))
    FakeExecutor.submitted = []
    profile = load_profile("dev-cluster")

    retry = submit(cells, profile, results, retry_failed=True, log=lambda _: None, limits=Limits())
    assert FakeExecutor.submitted == [[failed.seed]] and list(retry.job_ids) == [failed.run_id()]
    assert retry.skipped[new.run_id()] == "not failed (never submitted)"
    assert [e["job_id"] for e in read_ledger(results)[failed.run_id()]] == ["5_2", "9_0"]  # history kept

    sub = submit(cells, profile, results, log=lambda _: None, limits=Limits())  # the retried cell is now pending as 9_0
    assert FakeExecutor.submitted[-1] == [new.seed]
    assert sub.skipped == {done.run_id(): "done", queued.run_id(): "pending (job 5_1)", failed.run_id(): "pending (job 9_0)"}


def test_job_states_reads_squeue_then_sacct(monkeypatch):
    calls = []

    def fake(*args):
        calls.append(args[0])
        if args[0] == "squeue":
            return "12_0|RUNNING|0:40|None\n12_1|PENDING|0:00|Resources\n99|RUNNING|1:00|None\n"
        return "12_2|CANCELLED by 0|00:00:05\n"

    monkeypatch.setattr(slurm_queue, "_slurm", fake)
    st = slurm_queue.job_states(["12_0", "12_1", "12_2", "12_3"])
    assert calls == ["squeue", "sacct"]
    assert (st["12_0"].state, st["12_0"].elapsed, st["12_1"].reason) == ("RUNNING", "0:40", "Resources")
    assert st["12_2"].state == "CANCELLED" and not st["12_2"].active
    assert st["12_3"].state == "GONE" and not st["12_3"].active  # unknown to SLURM: ended, so nothing waits on it


def clmerge(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--executor slurm needs --profile slurm/NAME.yaml"),
        (["--profile", "dev-cluster", "--cells-per-job", "3"], "are for the local executor"),
        (["--profile", "nope"], "SLURM profile 'nope' is neither a file nor a name in slurm/"),
    ],
)
def test_cli_slurm_argument_errors(results, extra, message):
    p = clmerge("grid", "smoke", "--executor", "slurm", *extra)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_cli_status_of_a_fresh_grid(results):
    p = clmerge("status", "digits-2x5")
    assert p.returncode == 0 and p.stdout.splitlines()[0].startswith("state ")
    assert re.search(r"^(\d+) todo — \1 cells$", p.stdout, re.M) and "\ntodo     -" in p.stdout, p.stdout


def test_submit_reruns_interrupted_and_mismatched_cells_but_retry_failed_does_not(results, monkeypatch):
    cells = _cells(2)
    interrupted, mismatched = cells
    atomic_write_json(run_dir(interrupted, results) / "interrupted.json", {"run_id": interrupted.run_id()})
    atomic_write_json(run_dir(mismatched, results) / "result.json",  # another cell's result in this directory
                      {"status": "complete", "run_id": interrupted.run_id(), "config": interrupted.to_dict()})
    monkeypatch.setattr(status, "job_states", lambda ids: {})
    monkeypatch.setattr(slurm, "make_executor", lambda profile, folder: FakeExecutor(folder))
    FakeExecutor.submitted = []
    profile = load_profile("dev-cluster")
    retry = submit(cells, profile, results, retry_failed=True, log=lambda _: None, limits=Limits())
    assert FakeExecutor.submitted == [] and retry.skipped == {
        interrupted.run_id(): "not failed (interrupted)", mismatched.run_id(): "not failed (mismatch)"}
    submit(cells, profile, results, log=lambda _: None, limits=Limits())
    assert sorted(FakeExecutor.submitted[-1]) == sorted([interrupted.seed, mismatched.seed])
