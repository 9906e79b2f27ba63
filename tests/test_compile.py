"""torch.compile of the training forward (harness/train/compile.py), checked on CPU with cheap backends: a compiled run
equals the eager one over several tasks, the number of graphs does not grow with the tasks, and the fixed adapter
slot and the tensor LoRA scale reproduce the eager/peft numbers bit for bit."""

from __future__ import annotations

import dataclasses
import pytest
import torch

from harness.config import ExecConfig
from harness.core.errors import ConfigError
from harness.model.backbone import BackboneConfig, CLModel
from harness.resolve import resolve
from harness.train import compile as compiling
from harness.train.setup import build, pick_device
from harness.train.trainer import run_tasks
from tests.conftest import FAST

TASKS = 4


class CountingBackend:
    """A torch.compile backend that counts the graphs handed to it, then runs them with `inner`."""

    def __init__(self, inner: str = "eager"):
        self.graphs = 0
        self.inner = inner

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if self.inner == "eager":
            return gm.forward
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(self.inner)(gm, example_inputs)


def _run(method: str, compile_setting: str, backend: CountingBackend | None = None, n_train: int = 150,
         fused_qkv: bool = False):
    """TASKS tasks of split-digits on the micro ViT, `n_train` images a task: 2 full batches of 64 + one of 22 (the
    eager remainder). With `backend`, its graph count is recorded at the end of every task (`graphs_per_task`)."""
    cfg = resolve("split-digits", method, seed=1, overrides=FAST)
    exec_cfg = ExecConfig(progress=False, compile=compile_setting, prefetch="off")
    s = build(cfg, exec_cfg)
    s.model.set_fused_qkv(fused_qkv)
    small = tuple(
        dataclasses.replace(t, train_indices=t.train_indices[:n_train], test_indices=t.test_indices[:60])
        for t in s.stream.tasks
    )
    s.stream = s.method.ctx.stream = dataclasses.replace(s.stream, tasks=small)
    graphs: list[int] = []
    if backend is not None:
        end_task = s.method.end_task

        def counted(model, task, data):
            graphs.append(backend.graphs)
            return end_task(model, task, data)

        s.method.end_task = counted
    state = run_tasks(s, exec_cfg, stop_after=TASKS)
    return state, graphs


@pytest.mark.parametrize("method,inner", [("seq-lora", "eager"), ("pm", "aot_eager")])
def test_compiled_run_equals_eager_with_one_graph_over_all_tasks(monkeypatch, method, inner):
    """Over 4 tasks (P&M: its per-step scale 1±ε included) the compiled loop gives the eager numbers, and dynamo hands
    over one graph in all: none per task (new adapter), per P&M scale or per partial batch (which runs eagerly)."""
    eager, _ = _run(method, "off")
    torch._dynamo.reset()
    backend = CountingBackend(inner)
    monkeypatch.setattr(compiling, "BACKEND", backend)
    compiled, graphs = _run(method, "on", backend)
    assert graphs == [1] * TASKS, f"graphs compiled by the end of each task: {graphs}"
    for a, b in zip(eager.acc, compiled.acc, strict=True):
        assert a == pytest.approx(b, abs=1 / 60 + 1e-9)  # at most one test image of 60 may flip
    for a, b in zip(eager.grad_norms, compiled.grad_norms, strict=True):
        assert a["all"] == pytest.approx(b["all"], rel=1e-4)
    if method == "pm":
        for r, q in zip(eager.method_records, compiled.method_records, strict=True):
            assert r["alpha"] == pytest.approx(q["alpha"], rel=1e-3, abs=1e-6)
            assert r["perturbation_draws"] == q["perturbation_draws"]
        assert any(sum(r["perturbation_draws"][k] for k in ("+1", "-1")) for r in compiled.method_records)


def test_fused_qkv_path_compiles_once_and_matches_the_plain_path(monkeypatch, one_thread):
    """The fused q|k|v + LoRA-down path (CLModel.set_fused_qkv, the GPU check's comparison) under torch.compile: one
    graph over 4 tasks (it reads the adapter slots and scale tensors, which do not change from task to task), and the
    numbers of the plain eager loop to float rounding."""
    plain, _ = _run("seq-lora", "off", n_train=70)  # one full batch (compiled) and one of 6 (eager) a task
    torch._dynamo.reset()
    backend = CountingBackend("eager")
    monkeypatch.setattr(compiling, "BACKEND", backend)
    fused, graphs = _run("seq-lora", "on", backend, n_train=70, fused_qkv=True)
    assert graphs == [1] * TASKS, f"graphs compiled by the end of each task: {graphs}"
    for a, b in zip(plain.acc, fused.acc, strict=True):
        assert a == pytest.approx(b, abs=1 / 60 + 1e-9)
    # fp32 on the CPU: float rounding. Under CUDA's bf16 autocast the fused matmul rounds its q|k|v and LoRA-down
    # products once instead of separately: up to 0.95% apart on an H200 (GPU check, docs/performance.md)
    rel = 1e-4 if pick_device("auto").type == "cpu" else 2e-2
    for a, b in zip(plain.grad_norms, fused.grad_norms, strict=True):
        assert a["all"] == pytest.approx(b["all"], rel=rel)


def _micro(**kw) -> CLModel:
    return CLModel(BackboneConfig(preset="vit-micro-test", **kw))


def _adapter_weights(m: CLModel, name: str) -> dict[str, torch.Tensor]:
    return {f"{n}.{ab}": getattr(layer, f"lora_{ab}")[name].weight.detach().clone()
            for n, layer in m.lora_layers().items() for ab in "AB"}


@pytest.mark.parametrize("kw", [{}, {"lora_rank": 3, "lora_targets": ["q", "v"]}])
def test_reused_slot_is_initialised_like_a_fresh_peft_adapter(kw):
    """A slot re-initialised in place holds, bit for bit, what peft's add_adapter draws for a new adapter under the
    same seed (with one trained and dropped before it), the same Parameter objects, and the global RNG is untouched."""
    fresh = _micro(**kw)
    fresh.add_adapter("task1", seed=11)
    reused = _micro(**kw)
    first = reused.add_adapter("task0", seed=5)
    with torch.no_grad():
        for p in first:
            p.add_(1.0)  # as if trained
    reused.fold_adapter("task0", 1.0)
    rng = torch.random.get_rng_state()
    again = reused.add_adapter("task1", seed=11)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(p is q for p, q in zip(first, again, strict=True))  # the same slot: no new module
    assert all(p.requires_grad for p in again)
    want, got = _adapter_weights(fresh, "task1"), _adapter_weights(reused, "task1")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert any(w.abs().sum() > 0 for k, w in want.items() if k.endswith("A"))  # A was drawn, B is zero
    assert reused.adapters() == ["task1"]


def test_dropped_slot_contributes_nothing_and_two_adapters_coexist():
    m = _micro()
    m.heads.add(3, seed=0)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        plain = m(x)
    m.add_adapter("a", seed=1)
    m.add_adapter("b", seed=2)  # two live adapters: two slots; the newest is the active, trainable one
    assert m.adapters() == ["a", "b"]
    layer = next(iter(m.lora_layers().values()))
    assert layer.active_adapters == ["slot1"] and not layer.lora_A["a"].weight.requires_grad
    with torch.no_grad():
        for n in ("a", "b"):
            for p in m.adapter_parameters(n):
                p.normal_()
    state = m.trainable_state()
    other = _micro()
    other.load_trainable_state(state)
    with torch.no_grad():
        assert torch.equal(other(x), m(x))
    m.drop_adapter("b")  # as peft's delete_adapter: the remaining adapter becomes the active one
    assert layer.active_adapters == ["slot0"]
    m.pop_adapter("a")
    assert m.adapters() == [] and layer.active_adapters == []
    with torch.no_grad():
        assert torch.equal(m(x), plain)  # the retired slots are inactive (their B is not zero)


@pytest.mark.parametrize("value", [1.0, 0.5, 1.5, 0.1, 1 / 3, 2.0 / 7.0])
def test_tensor_scale_gives_the_bits_of_the_float_scale(value):
    """peft multiplies the LoRA output by `scaling`: a 0-dim fp32 tensor must give exactly the Python float's bits
    (the CPU kernel casts the float to fp32 too), forward and backward."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, 37, generator=g, requires_grad=True)
    by_float = y * value
    by_tensor = y * torch.full((), value, dtype=torch.float32)
    assert torch.equal(by_float, by_tensor)
    (ga,) = torch.autograd.grad(by_float.square().sum(), y)
    (gb,) = torch.autograd.grad(by_tensor.square().sum(), y)
    assert torch.equal(ga, gb)


def test_adapter_output_scale_swaps_the_scale_tensor_and_backward_sees_the_scaled_one():
    """P&M computes the loss inside `adapter_output_scale` and backpropagates after it: the gradient must be that of
    the scaled forward (the scale tensor is swapped, never overwritten while autograd holds it)."""
    m = _micro()
    m.add_adapter("t", seed=1)
    with torch.no_grad():
        for p in m.adapter_parameters("t"):
            p.normal_()
    x = torch.randn(2, 1, 16, 16)
    layer = next(iter(m.lora_layers().values()))
    base = layer.scaling["t"]
    with m.adapter_output_scale("t", 1.5):
        assert layer.scaling["t"].item() == 1.5
        loss = m.features(x).square().sum()
    assert layer.scaling["t"] is base and base.item() == 1.0
    loss.backward()
    got = [p.grad.clone() for p in m.adapter_parameters("t")]
    for p in m.adapter_parameters("t"):
        p.grad = None
    with m.adapter_output_scale("t", 1.5):
        m.features(x).square().sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(got, m.adapter_parameters("t")))


def test_compile_setting_auto_on_off_and_bad_value(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compiling.use_compile("auto", cpu) and compiling.use_compile("auto", cuda)
    assert compiling.use_compile("on", cpu) and not compiling.use_compile("off", cuda)
    monkeypatch.setenv("CLMERGE_COMPILE", "yes")
    with pytest.raises(ConfigError, match="CLMERGE_COMPILE.*auto, on or off.*'yes'"):
        compiling.use_compile(ExecConfig().compile, cpu)
    cfg = resolve("split-digits", "seq-lora", seed=0, overrides=FAST)
    with pytest.raises(ConfigError, match="compile"):
        build(cfg, ExecConfig(progress=False))
