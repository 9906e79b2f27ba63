"""The researcher's path (issue 24): every bad input exits non-zero with one clear message naming the fix, prints no
traceback and leaves finished results untouched; Ctrl-C is `interrupted` (resumable, not failed); a result.json
that is not its cell's is never done; the plan counts what the command will run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.cli import main
from harness.core.errors import ConfigError
from harness.core.io import atomic_write_json
from harness.dispatch.grid import expand, load_grid
from harness.store import run_dir
from tests.conftest import FAST
from tests.test_leaderboard import _result

TINY = {"name": "tiny", "benchmarks": ["split-digits-2x5"], "methods": ["seq-lora", "avg"], "seeds": [0],
        "overrides": dict(FAST)}


def _grid(tmp_path: Path, **edits) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **edits}))
    return str(path)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` → SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def finished(results, tmp_path):
    """A results directory holding one finished cell (a synthetic but matching result.json)."""
    cell = expand(load_grid(_grid(tmp_path)))[0]
    atomic_write_json(run_dir(cell) / "result.json", _result(cell, 0.5, 0.6))
    return results


BAD = [  # (argv after `clmerge`, the message's key phrase)
    (["grid", "{grids}"], "is a directory; give a YAML file"),
    (["reproduce", "{grid}", "--seeds", "5"], "--seeds 5: {grid} is a grid, which runs the seeds its file lists"),
    (["report", "{grid}", "--seeds", "2"], "--seeds is for published tables"),
    (["compare", "--method", "pm", "--benchmark", "split-digits-2x5", "--seeds", "1"],
     "--seeds 1: a paired comparison needs at least 2 seeds"),
    (["run", "--benchmark", "split-digits", "--method", "seq-lora", "--seed", "-1"],
     "--seed: must be an integer in [0, 2**32), got -1"),
    (["run", "--benchmark", "split-digits", "--method", "seq-lora", "--order-seed", "-2"], "--order-seed: must be"),
    (["run", "--benchmark", "split-digits", "--method", "seq-lora", "--set", "train.lr_lora=-0.001"],
     "train.lr_lora: must be a finite number >= 0, got -0.001"),
    (["run", "--benchmark", "split-digits", "--method", "seq-lora", "--set", "train.lr_head=.nan"],
     "train.lr_head: must be a finite number >= 0, got nan"),
    (["run", "--benchmark", "split-digits", "--method", "seq-lora", "--set", "train.lr_lora=.inf"],
     "train.lr_lora: must be a finite number >= 0, got inf"),
    (["run", "--benchmark", "split-digits", "--method", "seq-lora", "--set", "train.weight_decay=-1"],
     "train.weight_decay: must be a finite number >= 0, got -1"),
    (["run", "--benchmark", "split-digits", "--method", "seq-lora", "--set", "method.epsilon=0.5"],
     "unknown key 'method.epsilon': method 'seq-lora' has no parameters"),
    (["grid", "{grid:seeds=[0, 0]}"], "seeds: 0 listed more than once"),
    (["grid", "{grid:method_sweep={'pm': {'method.epsilon': [0.5]}}}"],
     "method_sweep.pm: 'pm' is a registered method but not one of this grid's methods (seq-lora, avg)"),
    (["grid", "{grid:method_overrides={'nope': {}}}"], "unknown method 'nope' in"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_one_message_no_traceback_results_untouched(finished, tmp_path, capsys, argv, message):
    grid = _grid(tmp_path)
    fill = {"grids": str(tmp_path), "grid": grid}
    args = []
    for a in argv:
        if a.startswith("{grid:"):  # a grid with one edit
            key, _, value = a[6:-1].partition("=")
            (tmp_path / "edited").mkdir(exist_ok=True)
            a = _grid(tmp_path / "edited", **{key: yaml.safe_load(value)})
        args.append(a.format(**fill))
    before = _snapshot(finished)
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert message.format(**fill) in err and err.startswith("clmerge: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err and _snapshot(finished) == before


def _cli(*args, root: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "harness.cli", "--results", str(root), *args], capture_output=True,
                          text=True, env=env, timeout=300, **kw)


def test_results_option_pointing_at_a_file_is_refused_everywhere(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("not a directory")
    for args in (["run", "--benchmark", "split-digits", "--method", "seq-lora"], ["grid", "smoke"],
                 ["report", "smoke"], ["status", "smoke"]):
        p = _cli(*args, root=f)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip() == (f"clmerge: error: --results {f}: is a file, not a directory; give a directory "
                                    "(it is created if missing), e.g. --results ./results")
    assert _cli("status", "smoke", root=f / "sub").stderr.count(f"is under the file {f}") == 1
    assert f.read_text() == "not a directory"


def _interrupt_after_first_task(cmd: list[str], root: Path) -> subprocess.CompletedProcess:
    """Start `clmerge --results root CMD`, send Ctrl-C (SIGINT to its process group, as a terminal does) once a
    task checkpoint exists, return the finished process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "--results", str(root), *cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.time() + 240
    while not list(root.glob("runs/*/*/*/checkpoint.pt")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    assert p.poll() is None, "the run finished before it could be interrupted"
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=240)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


SLOW = ["--set", "backbone.preset=vit-micro-test", "--set", "train.epochs=2", "--threads", "1"]


def test_ctrl_c_is_interrupted_not_failed_and_resumes_bit_identical(tmp_path):
    root = tmp_path / "r"
    run = ["run", "--benchmark", "split-digits-2x5", "--method", "seq-lora", *SLOW]
    p = _interrupt_after_first_task(run, root)
    assert p.returncode == 130 and "Traceback" not in p.stdout + p.stderr, p.stderr
    assert "clmerge: interrupted (Ctrl-C). Finished cells are kept; interrupted cells resume" in p.stderr
    (d,) = root.glob("runs/*/*/*")
    assert (d / "interrupted.json").exists() and not (d / "error.json").exists() and (d / "checkpoint.pt").exists()
    grid = tmp_path / "one.yaml"
    grid.write_text(yaml.safe_dump({"name": "one", "benchmarks": ["split-digits-2x5"], "methods": ["seq-lora"],
                                    "seeds": [0], "overrides": {"backbone.preset": "vit-micro-test", "train.epochs": 2}}))
    status = _cli("status", str(grid), root=root)
    assert status.returncode == 0 and "\ninterrupted " in status.stdout and "1 interrupted — 1 cells" in status.stdout
    plan = _cli("grid", str(grid), "--dry-run", root=root)
    assert "1 to run (including 1 interrupted: this command reruns them" in plan.stdout
    assert _cli(*run, root=root).returncode == 0  # resumes from the checkpoint
    events = (d / "events.log").read_text()
    assert "interrupted: KeyboardInterrupt" in events and "resumed after task 0" in events
    assert not (d / "interrupted.json").exists()
    assert _cli(*run, root=tmp_path / "plain").returncode == 0
    resumed, plain = (json.loads((r / d.relative_to(root) / "result.json").read_text())
                      for r in (root, tmp_path / "plain"))
    assert resumed["acc_matrix"] == plain["acc_matrix"] and resumed["method_records"] == plain["method_records"]


def test_ctrl_c_during_a_local_grid_stops_cleanly_and_the_rerun_finishes(tmp_path):
    root = tmp_path / "r"
    grid = tmp_path / "two.yaml"
    grid.write_text(yaml.safe_dump({"name": "two", "benchmarks": ["split-digits-2x5"], "methods": ["seq-lora", "avg"],
                                    "seeds": [0], "overrides": {"backbone.preset": "vit-micro-test", "train.epochs": 2}}))
    p = _interrupt_after_first_task(["grid", str(grid), "--max-parallel", "1"], root)
    assert p.returncode == 130 and "Traceback" not in p.stdout + p.stderr, p.stderr
    logs = [f.read_text() for f in root.glob("jobs/*/*_log.*")]
    assert logs and not any("Traceback" in text for text in logs)  # the job stopped cleanly too
    assert any("[interrupted] split-digits-2x5 × seq-lora" in text for text in logs)
    status = _cli("status", str(grid), root=root)
    assert status.returncode == 0 and "1 interrupted, 1 todo — 2 cells" in status.stdout, status.stdout
    again = _cli("grid", str(grid), root=root)
    assert again.returncode == 0 and again.stdout.count("[done]") == 2, again.stdout + again.stderr


def test_a_result_that_does_not_match_its_cell_is_not_done(results, tmp_path, capsys):
    grid = _grid(tmp_path, methods=["avg"])
    (avg,) = expand(load_grid(grid))
    wrong = _result(avg, 0.5, 0.6)
    wrong["config"] = {**wrong["config"], "seed": 7}  # e.g. copied from another run
    atomic_write_json(run_dir(avg) / "result.json", wrong)
    assert main(["grid", grid, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 cells — 1 to run (including 1 mismatch: this command reruns them" in out
    assert main(["status", grid]) == 0
    out = capsys.readouterr().out
    assert "\nmismatch " in out and "its config hashes to" in out and "1 mismatch — 1 cells" in out
    assert main(["grid", grid, "--executor", "debug"]) == 0
    capsys.readouterr()
    fixed = json.loads((run_dir(avg) / "result.json").read_text())
    assert fixed["run_id"] == avg.run_id() and fixed["config"] == avg.to_dict()
    assert main(["status", grid]) == 0 and "1 done — 1 cells" in capsys.readouterr().out


def test_plan_counts_failed_cells_among_those_the_command_runs(results, tmp_path, capsys, monkeypatch):
    import harness.dispatch.executors as executors

    grid = _grid(tmp_path)
    seq, avg = expand(load_grid(grid))
    atomic_write_json(run_dir(seq) / "error.json", {"error": "boom"})
    assert main(["grid", grid, "--dry-run"]) == 0
    assert "2 to run (including 1 failed" in capsys.readouterr().out
    sent = []
    monkeypatch.setattr(executors, "dispatch", lambda cells, **kw: sent.extend(executors.pending(cells)) or [])
    assert main(["grid", grid]) == 0 and len(sent) == 2  # planned 2, dispatched 2
    sent.clear()
    assert main(["grid", grid, "--retry-failed"]) == 0 and [c.method for c in sent] == ["seq-lora"]


def test_tune_refuses_tasks_too_small_to_hold_out_a_validation_sample():
    from harness.data.stream import Task, TaskStream
    from harness.data.validation import hold_out

    labels = np.array([0] * 5 + [1] * 5)  # 5 per class: round(0.1 · 5) = 0 held out
    task = Task(0, (0, 1), 0, np.arange(10), np.arange(0))
    stream = TaskStream((0, 1), (task,), np.array([0, 1]))
    with pytest.raises(ConfigError, match=r"task 0 \(10 training samples over 2 classes\) keeps none .* at least 6 "
                                          r"training samples per class, or drop tune: true"):
        hold_out(stream, labels, 0, "h")
    labels6 = np.array([0] * 6 + [1] * 6)
    task6 = Task(0, (0, 1), 0, np.arange(12), np.arange(0))
    _, val, record = hold_out(TaskStream((0, 1), (task6,), np.array([0, 1])), labels6, 0, "h")
    assert record["num_val"] == [2]
