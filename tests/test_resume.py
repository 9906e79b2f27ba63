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

from harness.config import ExecConfig
from harness.dispatch.executors import CellsJob, dispatch
from harness.method.registry import get_method
from harness.resolve import resolve
from harness.store import run_dir
from harness.train.run import execute
from harness.train.setup import build
from harness.train.trainer import run_tasks
from tests.conftest import FAST
from tests.fakes import kill_in_task_1

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


@pytest.mark.parametrize("method", ["seq-lora", "joint", "pm", "fisher-merge"])
def test_crash_mid_epoch_resumes_exactly(results, monkeypatch, method):
    """Killed in the 2nd epoch of task 1: the rerun resumes after epoch 1 of task 1 (model, optimiser, scheduler,
    batch order and the method's own generator — P&M's perturbation sampler — restored) and matches."""
    cfg = resolve("split-digits-2x5", method, seed=4, overrides=THREE_EPOCHS)
    reference = _reference(cfg)
    d = kill_in_task_1(monkeypatch, get_method(method), cfg, QUIET)
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


def test_background_epoch_checkpoints_resume_exactly(results, monkeypatch):
    """Epoch checkpoints serialised on the writer thread — slowed down here, so that the kill lands while a write is
    in flight — are complete when the killed run unwinds, and the rerun resumes from them exactly."""
    import harness.train.checkpoints as checkpoints

    cfg = resolve("split-digits-2x5", "pm", seed=4, overrides=THREE_EPOCHS)
    reference = _reference(cfg)
    writers: set[str] = set()
    real_save = checkpoints.atomic_torch_save

    def slow_save(obj, path):
        if Path(path).name.endswith(".epoch.pt"):
            writers.add(threading.current_thread().name)
            time.sleep(0.2)
        real_save(obj, path)

    monkeypatch.setattr(checkpoints, "atomic_torch_save", slow_save)
    on = ExecConfig(progress=False, background_checkpoints=True)
    d = kill_in_task_1(monkeypatch, get_method("pm"), cfg, on)
    execute(cfg, on)
    assert writers == {"checkpoint-writer"}
    result = json.loads((d / "result.json").read_text())
    _assert_same(result, reference)
    assert result["grad_norms"] == reference.grad_norms


def test_host_snapshot_is_a_copy_that_later_updates_cannot_change():
    from harness.core.io import host_snapshot

    w = torch.arange(4.0)
    norms = {"all": [1.0]}
    state = {"w": w, "again": w, "norms": norms, "pair": (w, 3), "step": torch.tensor(2.0)}
    snap, ready = host_snapshot(state)
    ready()
    w.add_(10.0)
    norms["all"].append(2.0)
    assert torch.equal(snap["w"], torch.arange(4.0)) and snap["again"] is snap["w"] and snap["pair"][0] is snap["w"]
    assert snap["norms"] == {"all": [1.0]} and snap["pair"][1] == 3 and snap["step"].item() == 2.0


def test_background_writer_runs_one_write_at_a_time_and_reraises_errors():
    from harness.core.io import BackgroundWriter

    order: list[str] = []
    writer = BackgroundWriter()

    def slow():
        time.sleep(0.1)
        order.append("first")

    writer.submit(slow)
    writer.submit(lambda: order.append("second"))  # waits for the first
    writer.wait()
    assert order == ["first", "second"]

    def failing():
        raise OSError("disk full")

    writer.submit(failing)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # reported once
    inline = BackgroundWriter(background=False)
    inline.submit(lambda: order.append(threading.current_thread().name))
    assert order[-1] == threading.main_thread().name


def test_background_writer_survives_a_signal_inside_start_and_keeps_the_unwinding_exception(monkeypatch):
    """submitit's USR2 handler raises SystemExit wherever the main thread is, also inside Thread.start(): the writer's
    exit must not replace it with "cannot join thread before it is started" (a requeue then became a failed cell),
    must still join a write that did begin, and attaches a failed write to the unwinding exception as a note."""
    from harness.core.io import BackgroundWriter

    original_start = threading.Thread.start
    wrote: list[str] = []

    def interrupted_before_spawn(self):
        raise SystemExit(144)

    def interrupted_after_spawn(self):
        original_start(self)
        raise SystemExit(144)

    for start, expected in [(interrupted_before_spawn, []), (interrupted_after_spawn, ["written"])]:
        monkeypatch.setattr(threading.Thread, "start", start)
        with pytest.raises(SystemExit) as info:
            with BackgroundWriter() as writer:
                writer.submit(lambda: (time.sleep(0.05), wrote.append("written")))
        monkeypatch.setattr(threading.Thread, "start", original_start)
        assert info.value.code == 144 and wrote == expected  # the write that began was joined before the exit
        assert not getattr(info.value, "__notes__", None)  # and nothing went wrong on the way out
        wrote.clear()

    def failing():
        raise OSError("disk full")

    with pytest.raises(KeyboardInterrupt) as info:
        with BackgroundWriter() as writer:
            writer.submit(failing)
            raise KeyboardInterrupt
    assert "background checkpoint write failed: OSError('disk full')" in "".join(info.value.__notes__)
    with pytest.raises(OSError, match="disk full"):  # no exception unwinding: the write's error is raised
        with BackgroundWriter() as writer:
            writer.submit(failing)


def test_checkpoints_load_on_the_host_and_adam_step_counters_stay_there(results, tmp_path, one_thread):
    """A mid-task resume on a device: the epoch checkpoint is loaded on the CPU, the model and method state are moved
    to the run's device, and the optimiser state is left to `Optimizer.load_state_dict`, which moves the moments to
    their parameters' device and keeps AdamW's `step` counters on the host (on the device, every step would read
    them back: one sync per parameter per step). Shown on the stand-in device (tests/standin.py)."""
    from harness.train import checkpoints
    from harness.train.trainer import make_optimizer
    from tests.standin import STANDIN, StandInDevice

    cfg = resolve("split-digits-2x5", "ewc", seed=0, overrides=FAST)
    on = ExecConfig(progress=False, device=str(STANDIN), prefetch="off", compile="off")
    with StandInDevice():
        s = build(cfg, on)
        task = s.stream.tasks[0]
        s.method.begin_task(s.model, task)
        s.method.fisher = {n: torch.ones_like(w) for n, w in s.model.merged_weights().items()}  # method state on the device
        opt = make_optimizer(s.method, s.model, task, cfg.train)
        loss = s.model(torch.zeros(2, 1, 16, 16, device=STANDIN)).sum()
        loss.backward()
        opt.step()
        path = tmp_path / "checkpoint.epoch.pt"
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        checkpoints.save_epoch_checkpoint(path, s, task, 1, opt, sched, torch.Generator(), {"all": [], "backbone": []})
        fresh = build(cfg, on)
        fresh.method.begin_task(fresh.model, task)
        saved = checkpoints.load_epoch_checkpoint(path, fresh, task)
        assert all(t.device.type == "cpu" for st in saved["optimizer"]["state"].values() for t in st.values())
        assert all(w.device == STANDIN for w in fresh.method.fisher.values())  # moved with the method state
        opt2 = make_optimizer(fresh.method, fresh.model, task, cfg.train)
        opt2.load_state_dict(saved["optimizer"])
        states = list(opt2.state.values())
        assert states and all(st["step"].device.type == "cpu" for st in states)
        assert all(st["exp_avg"].device == STANDIN and st["exp_avg_sq"].device == STANDIN for st in states)
