"""Device placement, proven without a GPU, for every registered method: the whole lifecycle of a cell runs with the
model and data on a non-CPU stand-in device (tests/standin.py), where any op that meets a tensor left on the CPU
fails as it would on CUDA. Lifecycle: begin_task, training steps, end_task merge, evaluation, the epoch checkpoint,
a kill in the middle of task 1 and the resume from both checkpoints in a fresh process state, the task checkpoint —
and the stand-in run must give the CPU run's numbers exactly (the stand-in computes with the CPU's kernels)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness.config import ExecConfig
from harness.method.registry import get_method, method_names
from harness.resolve import resolve
from harness.train import trainer
from harness.train.setup import build
from tests.conftest import FAST
from tests.fakes import crash_in_task_1
from tests.standin import STANDIN, DeviceMismatch, StandInDevice, StandInTensor

ON_STANDIN = ExecConfig(progress=False, device=str(STANDIN), prefetch="off", compile="off")
ON_CPU = dataclasses.replace(ON_STANDIN, device="cpu")
# methods whose random draws come from a generator on the device off the CPU (another stream than on the CPU, by
# design): their numbers are not compared with the CPU run's
DRAWS_ON_THE_DEVICE = {"pm-gauss"}  # methods/pm.py: the Gaussian directions, drawn where the LoRA lives
OVERRIDES = {**FAST, "train.batch_size": 12, "train.epochs": 2}


def _small_setup(cfg, exec_cfg):
    """The run's Setup on 24 training and 8 test images a task (2 steps an epoch): every hook runs, on less data."""
    s = build(cfg, exec_cfg)
    small = tuple(
        dataclasses.replace(t, train_indices=t.train_indices[:24], test_indices=t.test_indices[:8]) for t in s.stream.tasks
    )
    s.stream = s.method.ctx.stream = dataclasses.replace(s.stream, tasks=small)
    return s


def test_standin_fails_where_cuda_fails():
    """The stand-in is not blind: a CPU tensor (of one or more dims) meeting a device tensor, and a CPU generator
    drawing into one, raise; a 0-dim CPU tensor, a copy to the CPU and device factories do not."""
    with StandInDevice():
        x = torch.ones(3, 4).to(STANDIN)
        assert isinstance(x, StandInTensor) and x.device == STANDIN
        lin = torch.nn.Linear(4, 2)
        with pytest.raises(DeviceMismatch):
            lin(x)
        with pytest.raises(DeviceMismatch):
            torch.randn(3, generator=torch.Generator().manual_seed(0), device=STANDIN)
        with pytest.raises(DeviceMismatch):
            x.normal_(generator=torch.Generator().manual_seed(0))
        with pytest.raises(TypeError):
            x.numpy()
        w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
        lin.to(STANDIN)
        y = lin(x) * torch.tensor(2.0) + torch.zeros(2, device=STANDIN)  # a 0-dim CPU tensor is allowed, as on CUDA
        assert isinstance(y, StandInTensor) and type(y.cpu()) is torch.Tensor
    assert torch.equal(y.cpu(), 2 * torch.nn.functional.linear(torch.ones(3, 4), w, b))  # real values


def _close(a, b) -> bool:
    """Nested lists/dicts of numbers equal up to float rounding (rel 1e-4); everything else equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    return a == b


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


# every registered method with its defaults, and the options that take other device paths
CASES = [(m, {}) for m in method_names()] + [("trm", {"method.augment": "both"})]  # + TRM's random directions


def _killed_then_resumed(cfg, exec_cfg, monkeypatch, checkpoint):
    """Run `cfg` on exec_cfg's device until a simulated kill in epoch 2 of task 1 (task and epoch checkpoints on
    disk), then resume in a fresh Setup (as a restarted process) through task 2. Returns (final state, resumed Setup,
    the devices of AdamW's step counters at the start of each epoch of the resumed run)."""
    step_devices: list[str] = []
    original = trainer.run_epoch

    def watched(s, task, opt, batches, watch, heads):
        step_devices.extend(str(st["step"].device) for st in opt.state.values() if "step" in st)
        original(s, task, opt, batches, watch, heads)

    s = _small_setup(cfg, exec_cfg)
    assert s.device == torch.device(exec_cfg.device)
    method_cls = type(s.method)
    training_loss = method_cls.training_loss
    crash_in_task_1(monkeypatch, method_cls, cfg, epochs_done=1)
    with pytest.raises(KeyboardInterrupt):
        trainer.run_tasks(s, exec_cfg, checkpoint=checkpoint)
    monkeypatch.setattr(method_cls, "training_loss", training_loss)
    monkeypatch.setattr(trainer, "run_epoch", watched)
    resumed = _small_setup(cfg, exec_cfg)
    state = trainer.run_tasks(resumed, exec_cfg, checkpoint=checkpoint, stop_after=2)
    monkeypatch.setattr(trainer, "run_epoch", original)
    return state, resumed, step_devices


def _numbers(state) -> list:
    return [state.acc, state.task_aware, state.grad_norms, _untimed(state.method_records)]


@pytest.mark.parametrize("method, params", CASES, ids=[m + "".join(f"-{v}" for v in p.values()) for m, p in CASES])
def test_every_method_runs_its_whole_lifecycle_on_a_device(results, monkeypatch, method, params, tmp_path):
    cfg = resolve("split-digits-2x5", method, seed=0, overrides={**OVERRIDES, **params})
    reference = trainer.run_tasks(_small_setup(cfg, ON_CPU), ON_CPU, stop_after=2)
    with StandInDevice():
        state, resumed, step_devices = _killed_then_resumed(cfg, ON_STANDIN, monkeypatch, tmp_path / "checkpoint.pt")
        assert all(isinstance(p, StandInTensor) for p in resumed.model.parameters())
    assert step_devices and set(step_devices) == {"cpu"}, f"{method}: AdamW step counters resumed on {set(step_devices)}"
    assert all(p.device == STANDIN for p in resumed.model.parameters())
    if method in DRAWS_ON_THE_DEVICE:
        return
    # the stand-in runs the CPU's kernels, but composite ops that branch on the device type may decompose
    # differently (measured: 1-ulp differences in some gradients), so the numbers agree closely, not bit for bit
    for got, want in zip(_numbers(state), _numbers(reference)):
        assert _close(got, want), f"{method}: the stand-in run's numbers differ from the CPU run's: {got} vs {want}"


ON_CUDA = dataclasses.replace(ON_STANDIN, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it on one)")
@pytest.mark.parametrize("method, params", CASES, ids=[m + "".join(f"-{v}" for v in p.values()) for m, p in CASES])
def test_every_method_runs_its_whole_lifecycle_on_cuda(results, monkeypatch, method, params, tmp_path):
    """The stand-in test's lifecycle on a real GPU: every method trains, merges, evaluates, is killed mid-task 1 and
    resumes on CUDA, with AdamW's step counters on the CPU, and the resumed run gives the uninterrupted CUDA run's
    numbers (to float rounding: cuBLAS may pick other kernels in a fresh Setup)."""
    cfg = resolve("split-digits-2x5", method, seed=0, overrides={**OVERRIDES, **params})
    uninterrupted = trainer.run_tasks(_small_setup(cfg, ON_CUDA), ON_CUDA, stop_after=2)
    state, resumed, step_devices = _killed_then_resumed(cfg, ON_CUDA, monkeypatch, tmp_path / "checkpoint.pt")
    assert step_devices and set(step_devices) == {"cpu"}, f"{method}: AdamW step counters resumed on {set(step_devices)}"
    assert all(p.device.type == "cuda" for p in resumed.model.parameters())
    for got, want in zip(_numbers(state), _numbers(uninterrupted)):
        assert _close(got, want), f"{method}: the resumed CUDA run's numbers differ from the uninterrupted one's: {got} vs {want}"
