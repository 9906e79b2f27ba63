"""Mid-task resume: a run interrupted in the middle of an epoch — in-process, by the pre-timeout signal through
submitit's LOCAL executor, or by SIGKILL — resumes from its last epoch checkpoint and ends with exactly the results
of an uninterrupted run (bit-exact on CPU)."""

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import submitit
import torch

from harness.config import ExecConfig, resolve
from harness.dispatch import CellsJob, dispatch
from harness.registry import get_method
from harness.run import execute
from harness.store import is_complete, run_dir
from harness.trainer import build, run_tasks
from tests.conftest import FAST
from tests.fakes import crash_in_task_1

QUIET = ExecConfig(progress=False)
THREE_EPOCHS = {**FAST, "train.epochs": 3}


def _reference(cfg, threads: int | None = None):
    """The uninterrupted run, in this process, with the thread count the interrupted one used."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return run_tasks(build(cfg, QUIET), QUIET)
    finally:
        torch.set_num_threads(before)


def _assert_same(result: dict, reference) -> None:
    assert result["acc_matrix"] == reference.acc
    assert result["task_aware_matrix"] == reference.task_aware
    assert result["method_records"] == reference.method_records  # e.g. P&M's α_t and its perturbation-draw counts


@pytest.mark.parametrize("method", ["seq-lora", "joint", "pm"])
def test_crash_mid_epoch_resumes_exactly(results, monkeypatch, method):
    """Killed in the 2nd epoch of task 1: the rerun resumes after epoch 1 of task 1 (model, optimiser, scheduler,
    batch order and the method's own generator — P&M's perturbation sampler — restored) and matches."""
    cfg = resolve("split-digits-2x5", method, seed=4, overrides=THREE_EPOCHS)
    reference = _reference(cfg)
    cls = get_method(method)
    original = cls.training_loss
    crash_in_task_1(monkeypatch, cls, cfg, epochs_done=1)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, QUIET)
    d = run_dir(cfg)
    ep = torch.load(d / "checkpoint.epoch.pt", weights_only=False)
    assert (ep["task"], ep["epochs_done"]) == (1, 1) and not is_complete(d)
    monkeypatch.setattr(cls, "training_loss", original)
    assert execute(cfg, QUIET).status == "done"
    _assert_same(json.loads((d / "result.json").read_text()), reference)
    assert "resumed at task 1, epoch 1 of 3" in (d / "events.log").read_text()
    assert not (d / "checkpoint.epoch.pt").exists() and not (d / "checkpoint.pt").exists()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _running_pid(d: Path) -> int:
    """The pid of the process running the cell, from its events.log 'start' line."""
    starts = re.findall(r"pid=(\d+) job=\S+ start$", (d / "events.log").read_text(), re.M)
    return int(starts[-1])


def _mid_task(d: Path) -> bool:
    return (d / "checkpoint.epoch.pt").exists() and (d / "events.log").exists()


def test_local_executor_pre_timeout_signal_requeues_and_resumes_exactly(results):
    """USR2 (what SLURM and submitit's local controller send before a time limit) to a LOCAL job mid-task: the
    Checkpointable job requeues itself, the restarted process resumes from the epoch checkpoint, results match."""
    cfg = resolve("split-digits-2x5", "seq-lora", seed=6, overrides={**FAST, "train.epochs": 12})
    d = run_dir(cfg)
    ex = submitit.LocalExecutor(folder=results / "jobs" / "%j")
    ex.update_parameters(timeout_min=60)
    job = ex.submit(CellsJob(), [cfg.to_dict()], {"threads": 1, "progress": False, "device": "cpu"}, str(results))
    _wait_for(lambda: _mid_task(d), 300, "the first epoch checkpoint")
    os.kill(_running_pid(d), signal.SIGUSR2)
    reference = _reference(cfg, threads=1)  # meanwhile
    out = job.result()
    assert [o["status"] for o in out] == ["done"]
    events = (d / "events.log").read_text()
    assert "interrupted: job requeued" in events and re.search(r"resumed at task \d, epoch \d+ of 12", events), events
    _assert_same(json.loads((d / "result.json").read_text()), reference)


def test_local_dispatch_after_sigkill_resumes_exactly(results):
    """SIGKILL (no signal handler runs: OOM killer, node loss) mid-task under `dispatch(executor="local")`: the
    cell is reported failed, never hangs; dispatching again resumes it from the epoch checkpoint and it matches."""
    cfg = resolve("split-digits-2x5", "joint", seed=7, overrides={**FAST, "train.epochs": 6})
    d = run_dir(cfg)
    first: list = []
    t = threading.Thread(target=lambda: first.extend(dispatch([cfg], "local", results, max_parallel=1, log=lambda _: None)))
    t.start()
    _wait_for(lambda: _mid_task(d), 300, "the first epoch checkpoint")
    os.kill(_running_pid(d), signal.SIGKILL)
    t.join(120)
    assert not t.is_alive(), "dispatch hung on a killed job"
    assert [o.status for o in first] == ["failed"] and "died" in first[0].message
    again = dispatch([cfg], "local", results, max_parallel=1, log=lambda _: None)
    assert [o.status for o in again] == ["done"]
    assert "resumed at task" in (d / "events.log").read_text()
    _assert_same(json.loads((d / "result.json").read_text()), _reference(cfg, threads=os.cpu_count()))
