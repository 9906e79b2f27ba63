"""Optional experiment tracking: it records the run and changes nothing in result.json."""

import importlib.util
import json

import pytest

import harness.train.tracking as tracking
from harness.cli import main
from harness.config import ExecConfig
from harness.data.protocol import run_spec
from harness.data.sources import load_source
from harness.data.stream import build_stream
from harness.data.validation import VALIDATION_FRACTION
from harness.resolve import resolve
from harness.train.run import execute
from tests.conftest import FAST


class Recorder(tracking.Tracker):
    active = True

    def __init__(self):
        self.scalars, self.texts, self.closed = [], {}, False

    def scalar(self, name, value, step):
        self.scalars.append((name, value, step))

    def text(self, name, value):
        self.texts[name] = value

    def close(self):
        self.closed = True


def _labels(cfg):
    data = load_source(run_spec(cfg))
    return data.train_labels, data.test_labels


def _result(root, cfg) -> dict:
    r = json.loads((root / "runs" / cfg.benchmark / cfg.method / cfg.run_id() / "result.json").read_text())
    r.pop("timings"), r.pop("env")  # wall-clock and host facts
    return r


def _run(root, monkeypatch, cfg, log):
    monkeypatch.setenv("CLMERGE_RESULTS", str(root))
    execute(cfg, ExecConfig(progress=False, log=log))
    return _result(root, cfg)


def test_tuned_run_records_validation_and_tracking_changes_nothing(tmp_path, monkeypatch):
    cfg = resolve("split-digits-2x5", "pm", overrides={**FAST, "tune": True})
    plain = _run(tmp_path / "plain", monkeypatch, cfg, None)
    # tune=true: validation accuracy beside the test accuracy, on held-out training samples
    v = plain["validation"]
    assert plain["config"]["tune"] is True and len(v["hash"]) == 64 and v["fraction"] == VALIDATION_FRACTION
    assert [len(row) for row in v["acc_matrix"]] == [1, 2] and 0 <= v["metrics"]["a_last"] <= 1
    full = [len(t.train_indices) for t in build_stream(run_spec(cfg), None, *_labels(cfg)).tasks]
    assert [t["num_train"] for t in plain["stream"]["tasks"]] == [n - k for n, k in zip(full, v["num_val"])]
    rec = Recorder()
    monkeypatch.setattr(tracking, "open_tracker", lambda kind, c, root: rec)
    tracked = _run(tmp_path / "tracked", monkeypatch, cfg, "tensorboard")
    assert tracked == plain
    names = [n for n, _, _ in rec.scalars]
    steps = [s for n, _, s in rec.scalars if n == "train/loss"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # one per optimiser step
    assert any(n.startswith("train/lr/") for n in names)
    assert [v for n, v, s in rec.scalars if n == "acc/task_0"] == [row[0] for row in plain["acc_matrix"]]
    assert [v for n, v, s in rec.scalars if n == "val_acc/task_0"] == [row[0] for row in plain["validation"]["acc_matrix"]]
    assert sum(n == "grad_norm/backbone/task_1" for n in names) == len(plain["grad_norms"][1]["backbone"])
    assert json.loads(rec.texts["final/acc_matrix"]) == plain["acc_matrix"] and rec.closed


def test_tensorboard_backend_writes_events_without_changing_results(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    cfg = resolve("split-digits-2x5", "seq-lora", overrides=FAST)
    plain = _run(tmp_path / "plain", monkeypatch, cfg, None)
    assert _run(tmp_path / "tb", monkeypatch, cfg, "tensorboard") == plain
    assert list((tmp_path / "tb" / "tracking").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_a_missing_backend_is_refused_before_running(results, capsys, backend):
    if importlib.util.find_spec(backend) is not None:
        pytest.skip(f"{backend} is installed")
    assert main(["run", "--benchmark", "split-digits", "--method", "seq-lora", "--log", backend]) == 2
    assert f"the {backend} package is not installed" in capsys.readouterr().err
    assert not (results / "runs").exists()
