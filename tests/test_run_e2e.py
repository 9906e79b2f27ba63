"""End-to-end: one cell through the real trainer on the bundled digits, resume, failures."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness.config import ExecConfig
from harness.core.errors import TrainingDiverged
from harness.resolve import resolve
from harness.store import is_complete, run_dir
from harness.train.run import execute
from harness.train.setup import build
from harness.train.trainer import run_tasks
from methods.seq_lora import SeqLoRA
from tests.conftest import FAST

QUIET = ExecConfig(progress=False)


def test_run_writes_complete_result(results):
    cfg = resolve("split-digits", "seq-lora", seed=0, overrides=FAST)
    out = execute(cfg, QUIET)
    assert out.status == "done"
    r = json.loads((run_dir(cfg) / "result.json").read_text())
    assert r["status"] == "complete" and r["run_id"] == cfg.run_id()
    assert r["stream"]["class_order"] == list(range(10)) and len(r["stream"]["split_hash"]) == 64
    assert [len(row) for row in r["acc_matrix"]] == [1, 2, 3, 4, 5]
    assert set(r["env"]["packages"]) >= {"torch", "timm", "peft"} and r["env"]["device"] == "cpu"
    assert len(r["timings"]["task_seconds"]) == 5
    assert 0.0 <= r["metrics"]["a_last"] <= 1.0
    assert not (run_dir(cfg) / "checkpoint.pt").exists()
    # finished runs are never recomputed unless forced
    assert execute(cfg, QUIET).status == "skipped"
    assert execute(cfg, QUIET, force=True).status == "done"


def test_resumed_run_equals_uninterrupted(results):
    cfg = resolve("split-digits", "seq-lora", seed=3, overrides=FAST)
    full = run_tasks(build(cfg, QUIET), QUIET)
    ckpt = results / "ckpt.pt"
    run_tasks(build(cfg, QUIET), QUIET, checkpoint=ckpt, stop_after=2)
    s = build(cfg, QUIET)  # a fresh process-like start: everything rebuilt, state from disk
    resumed = run_tasks(s, QUIET, checkpoint=ckpt)
    assert resumed.acc == full.acc and resumed.task_aware == full.task_aware


def test_interrupted_run_leaves_no_result_and_resumes(results, monkeypatch):
    cfg = resolve("split-digits", "seq-lora", seed=1, overrides=FAST)
    reference = run_tasks(build(cfg, QUIET), QUIET)
    calls = []
    original = SeqLoRA.end_task

    def crash_on_third(self, model, task, data):
        calls.append(task.index)
        if task.index == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(self, model, task, data)

    monkeypatch.setattr(SeqLoRA, "end_task", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, QUIET)
    d = run_dir(cfg)
    assert not is_complete(d) and not (d / "result.json").exists()
    # Ctrl-C is an interruption, not a failure: recorded in interrupted.json (status: interrupted), no error.json
    assert (d / "interrupted.json").exists() and not (d / "error.json").exists()
    assert "interrupted: KeyboardInterrupt" in (d / "events.log").read_text()
    monkeypatch.setattr(SeqLoRA, "end_task", original)
    assert execute(cfg, QUIET).status == "done"  # resumes from the checkpoint after task 1
    r = json.loads((d / "result.json").read_text())
    assert r["acc_matrix"] == reference.acc
    assert not (d / "error.json").exists() and not (d / "interrupted.json").exists()


def test_nan_loss_fails_the_cell_without_result(results, monkeypatch):
    cfg = resolve("split-digits", "seq-lora", seed=0, overrides=FAST)
    monkeypatch.setattr(SeqLoRA, "training_loss", lambda self, m, x, y, t: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDiverged, match="loss is nan at task 0, epoch 0, step 0"):
        execute(cfg, QUIET)
    assert not is_complete(run_dir(cfg))


def test_sigkill_midway_leaves_nothing_that_looks_finished(results):
    cfg = resolve("split-digits", "seq-lora", seed=2, overrides={**FAST, "train.epochs": 3})
    d = run_dir(cfg)
    args = ["--benchmark", "split-digits", "--method", "seq-lora", "--seed", "2"]
    for k, v in {**FAST, "train.epochs": 3}.items():
        args += ["--set", f"{k}={v}"]
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (d / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (d / "checkpoint.pt").exists(), "the run never reached its first task checkpoint"
    assert not is_complete(d)
    assert execute(cfg, QUIET).status == "done" and is_complete(d)
