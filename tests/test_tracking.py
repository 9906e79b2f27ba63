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


# --------------------------------------------------------------------------------------------------------------------
# Issue 24: where runs land, x axes, names, failures, resumes, finished cells


class FakeWandb:
    """Stands in for the wandb package (not installed here): records what clmerge asks of it."""

    __version__ = "0.21.0"

    def __init__(self):
        self.inits, self.runs = [], []

    def init(self, **kw):
        self.inits.append(kw)
        run = FakeWandbRun()
        self.runs.append(run)
        return run


class FakeWandbRun:
    def __init__(self):
        self.defined, self.logged, self.summary, self.finished = [], [], {}, 0

    def define_metric(self, name, step_metric=None, hidden=False):
        self.defined.append((name, step_metric))

    def log(self, data):
        self.logged.append(dict(data))

    def finish(self):
        self.finished += 1


def test_wandb_run_lands_in_the_documented_folder_with_one_x_axis_per_series(results, monkeypatch):
    import sys

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = resolve("split-digits-2x5", "pm", overrides={**FAST, "tune": True})
    execute(cfg, ExecConfig(progress=False, log="wandb"))
    (kw,), (run,) = fake.inits, fake.runs
    assert kw["dir"] == str(results / "tracking" / "split-digits-2x5" / "pm" / "seed0" / cfg.run_id())
    assert kw["reinit"] == "finish_previous" and kw["mode"] == "offline"
    assert ("train/*", "train/step") in run.defined and ("acc/*", "acc/step") in run.defined
    train = [d for d in run.logged if "train/loss" in d]
    # one log call per optimiser step, holding the loss, both named learning rates and the step key
    assert [d["train/step"] for d in train] == list(range(1, len(train) + 1)) and len(train) >= 2
    assert {"train/lr/lora", "train/lr/head", "train/task"} <= set(train[0])
    acc = [d for d in run.logged if "acc/A_t" in d]
    assert [d["acc/step"] for d in acc] == [0, 1] and all(set(k.split("/")[0] for k in d) == {"acc"} for d in acc)
    final = [d for d in run.logged if "final/a_last" in d]
    assert len(final) == 1 and "final/val_a_last" in final[0]  # validation A_last as a number, not only text
    assert run.finished == 1
    from harness.train.tracking import _reinit

    assert _reinit(type("Old", (), {"__version__": "0.18.3"})) is True  # before the string form existed


def test_tracking_after_failure_resume_and_on_finished_cells(results, monkeypatch, capsys):
    from harness.method.registry import get_method
    from tests.fakes import kill_in_task_1

    recorders = []

    def opened(kind, c, root):
        recorders.append(Recorder())
        return recorders[-1]

    monkeypatch.setattr(tracking, "open_tracker", opened)
    cfg = resolve("split-digits-2x5", "seq-lora", overrides={**FAST, "train.epochs": 3})
    log = ExecConfig(progress=False, log="tensorboard")
    # an uninterrupted run's step axis …
    execute(cfg, log, root=results / "plain")
    plain = [s for n, _, s in recorders[0].scalars if n == "train/loss"]
    assert {n for n, _, _ in recorders[0].scalars if n.startswith("train/lr/")} == {"train/lr/lora", "train/lr/head"}
    # … is continued, not restarted, by a resumed one (killed in task 1 after its first epoch)
    kill_in_task_1(monkeypatch, get_method("seq-lora"), cfg, log)
    assert recorders[1].closed  # the interrupted run's tracker was closed
    assert execute(cfg, log).status == "done"
    resumed = [s for n, _, s in recorders[2].scalars if n == "train/loss"]
    assert resumed == plain[plain.index(resumed[0]):] and resumed[0] > 1  # same step numbers from the checkpoint on
    # a failing run closes its tracker too
    from methods.seq_lora import SeqLoRA

    monkeypatch.setattr(SeqLoRA, "end_task", lambda *a: (_ for _ in ()).throw(RuntimeError("merge exploded")))
    with pytest.raises(RuntimeError):
        execute(resolve("split-digits-2x5", "seq-lora", seed=1, overrides=FAST), log)
    assert recorders[-1].closed
    # --log on a finished cell: nothing is logged, and the command says so
    args = ["run", "--benchmark", "split-digits-2x5", "--method", "seq-lora", "--log", "tensorboard"]
    args += [a for k, v in {**FAST, "train.epochs": 3}.items() for a in ("--set", f"{k}={v}")]
    monkeypatch.setattr(tracking, "check_backend", lambda kind: None)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "--log tensorboard: 1 cell(s) had already finished and were not run, so nothing was logged" in err
