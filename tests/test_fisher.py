"""The diagonal empirical Fisher (harness/math/fisher.py) on the tiny float64 model: both estimators against brute-force
loops, the per-sample one's independence of the batching, and what that does to P&M's α."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import harness.math.fisher as harness_fisher
from harness.math.fisher import empirical_fisher
from tests.fakes import N_CLS, FakeData, make_task
from tests.test_methods_pm import begin, make_method, make_model, randomize


def fisher_setup():
    """A model whose merged weights ≠ W0, with a current head and a random current LoRA; data of 10 samples."""
    model = make_model()
    model.add_adapter("old", seed=1)
    model.double()
    randomize(model, "old", 2)
    model.fold_adapter("old", 0.4)
    model.heads.add(N_CLS, seed=3)
    model.add_adapter("cur", seed=4)
    model.double()
    randomize(model, "cur", 5)
    data = FakeData(make_task(0), seed=6)
    loss_fn = lambda x, y: F.cross_entropy(model.heads.heads[-1](model.features(x)) / 2.0, y)  # noqa: E731
    return model, data, loss_fn


def grads_wrt_effective_weights(model, loss_fn, x, y) -> dict[str, torch.Tensor]:
    """∂loss_fn(x, y)/∂W_eff through explicit leaf tensors W_eff = θ̂ + B·A·s (no hooks of the code under test)."""
    layers = model.lora_layers()
    leaves = {n: (m.get_base_layer().weight + m.lora_B["cur"].weight @ m.lora_A["cur"].weight * m.scaling["cur"])
              .detach().requires_grad_(True) for n, m in layers.items()}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: F.linear(a[0], leaves[n], mod.get_base_layer().bias))
               for n, m in layers.items()]
    model.eval()
    try:
        grads = torch.autograd.grad(loss_fn(x, y), list(leaves.values()))
    finally:
        for h in handles:
            h.remove()
    return dict(zip(leaves, grads))


def test_batch_estimator_equals_brute_force_mean_of_squared_batch_gradients():
    model, data, loss_fn = fisher_setup()
    batches = list(data.batches(4))  # sizes 4, 4, 2
    model.train()
    fisher = empirical_fisher(model, batches, loss_fn, "batch")
    assert model.training and all(p.grad is None for p in model.parameters())
    brute = {n: torch.zeros_like(f) for n, f in fisher.items()}
    for x, y in batches:
        for n, g in grads_wrt_effective_weights(model, loss_fn, x, y).items():
            brute[n] += g.square()
    for n in fisher:
        assert fisher[n].dtype == torch.float64 and fisher[n].shape == model.lora_layers()[n].get_base_layer().weight.shape
        torch.testing.assert_close(fisher[n], brute[n] / len(batches), rtol=1e-10, atol=1e-22)
        assert float(fisher[n].sum()) > 0


def test_batch_weighted_estimator_weighs_each_squared_batch_gradient_by_its_size():
    """BECAME's code: F = Σ_b |b|·ḡ_b² / N over batches of sizes 4, 4, 2 (N = 10), brute force."""
    model, data, loss_fn = fisher_setup()
    batches = list(data.batches(4))
    fisher = empirical_fisher(model, batches, loss_fn, "batch-weighted")
    brute = {n: torch.zeros_like(f) for n, f in fisher.items()}
    for x, y in batches:
        for n, g in grads_wrt_effective_weights(model, loss_fn, x, y).items():
            brute[n] += len(y) * g.square()
    plain = empirical_fisher(model, batches, loss_fn, "batch")
    for n in fisher:
        torch.testing.assert_close(fisher[n], brute[n] / 10, rtol=1e-10, atol=1e-22)
        assert not torch.allclose(fisher[n], plain[n])  # the 2-sample batch weighs 2/10, not 1/3


@pytest.mark.parametrize("batch_size", [1, 3, 10])
def test_per_sample_estimator_equals_a_brute_force_loop_of_per_sample_backward_passes(batch_size, monkeypatch):
    model, data, loss_fn = fisher_setup()
    # tiny chunks, so the chunked per-sample products are exercised across chunk boundaries
    monkeypatch.setattr("harness.math.fisher.CHUNK_ELEMENTS", 2 * 16 * 16)
    fisher = empirical_fisher(model, data.batches(batch_size), loss_fn)
    brute = {n: torch.zeros_like(f) for n, f in fisher.items()}
    n_samples = 0
    for x, y in data.batches(1):
        n_samples += 1
        for n, g in grads_wrt_effective_weights(model, loss_fn, x, y).items():
            brute[n] += g.square()
    assert n_samples == 10
    for n in fisher:
        torch.testing.assert_close(fisher[n], brute[n] / n_samples, rtol=1e-10, atol=1e-22)
        assert float(fisher[n].sum()) > 0


def test_a_partial_last_batch_weighs_its_samples_like_the_rest():
    """F over batches (4, 4, 2) is the sample-weighted mean of the batches' own Fishers: the 2-sample batch has
    weight 2/10, not 1/3 (which is what the batch estimator gives it)."""
    model, data, loss_fn = fisher_setup()
    batches = list(data.batches(4))
    whole = empirical_fisher(model, batches, loss_fn)
    parts = [empirical_fisher(model, [b], loss_fn) for b in batches]
    sizes = [len(b[1]) for b in batches]
    assert sizes == [4, 4, 2]
    for n in whole:
        weighted = sum(k * p[n] for k, p in zip(sizes, parts)) / sum(sizes)
        torch.testing.assert_close(whole[n], weighted, rtol=1e-10, atol=1e-22)
        assert not torch.allclose(whole[n], sum(p[n] for p in parts) / len(parts), rtol=1e-3)


def test_unknown_estimator_is_refused():
    model, data, loss_fn = fisher_setup()
    with pytest.raises(ValueError, match="estimator must be one of per-sample, batch"):
        empirical_fisher(model, data.batches(4), loss_fn, "per-batch")


def pm_alpha_2(batch_size: int, fisher: str) -> float:
    """α_2 of a two-task P&M run on fixed random task vectors, with the Fisher pass batched by `batch_size`."""
    model, method = make_model(), make_method("pm", fisher=fisher)
    method.train_cfg.batch_size = batch_size
    for i in range(2):
        task = make_task(i)
        begin(method, model, task, seed=20 + i)
        method.end_task(model, task, FakeData(task, seed=30 + i))
    return method.task_record(task)["alpha"]


def test_pm_alpha_does_not_depend_on_the_fisher_batch_size():
    alphas = [pm_alpha_2(bs, "per-sample") for bs in (1, 3, 4, 10)]
    assert 0.0 < alphas[0] < 1.0  # not clipped: the comparison is informative
    assert alphas == pytest.approx([alphas[0]] * 4, rel=1e-10)
    # the batch estimator on the same runs does depend on it (so the setting can detect the dependence)
    batch = [pm_alpha_2(bs, "batch") for bs in (1, 3, 10)]
    assert batch[0] == pytest.approx(alphas[0], rel=1e-10)  # batch size 1: the two estimators coincide
    assert max(batch) - min(batch) > 1e-3


def test_trainer_gives_pm_the_task_training_samples_for_its_fisher(results, monkeypatch):
    """In a real run, P&M's end_task gets the training bank and the task's training indices, and its Fisher pass
    sees exactly those images (evaluation view) — not the test data, not another task's."""
    import numpy as np

    import harness.math.fisher
    from harness.config import ExecConfig
    from harness.resolve import resolve
    from harness.train.setup import build
    from harness.train.trainer import run_tasks
    from tests.conftest import FAST

    cfg = resolve("split-digits-2x5", "pm", seed=0, overrides=FAST)
    s = build(cfg, ExecConfig(progress=False))
    seen: list[tuple] = []
    real_end_task, real_fisher = type(s.method).end_task, harness.math.fisher.empirical_fisher

    def end_task(self, model, task, data):
        seen.append((task, data.bank, np.asarray(data.indices).copy(), []))
        return real_end_task(self, model, task, data)

    def fisher(model, batches, loss_fn, estimator="per-sample"):
        xs = seen[-1][3]
        return real_fisher(model, (xs.append((x, y)) or (x, y) for x, y in batches), loss_fn, estimator)

    monkeypatch.setattr(type(s.method), "end_task", end_task)
    monkeypatch.setattr(harness.math.fisher, "empirical_fisher", fisher)
    run_tasks(s, ExecConfig(progress=False))
    assert len(seen) == len(s.stream.tasks) == 2
    for task, bank, indices, batches in seen:
        assert bank is s.train_bank
        np.testing.assert_array_equal(indices, task.train_indices)
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        ref_x, ref_y = zip(*s.train_bank.iterate(task.train_indices, 256))
        assert torch.equal(x, torch.cat(ref_x)) and torch.equal(y, torch.cat(ref_y))
        assert set(y.tolist()) == set(range(task.offset, task.offset + task.num_classes))
        assert len(y) == len(task.train_indices) != len(task.test_indices)


def test_precision_is_bf16_autocast_on_cuda_and_nothing_on_cpu():
    """The Fisher pass uses the run's precision (harness/core/precision.py): bf16 autocast on a CUDA device (checked
    without a GPU: the context object, not its effect), a null context on CPU (CPU results stay fp32, unchanged)."""
    import contextlib
    import warnings

    from harness.core.precision import autocast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available, disabling autocast" on a CPU-only machine
        ctx = autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert isinstance(autocast(torch.device("cpu")), contextlib.nullcontext)
    import inspect

    assert inspect.signature(empirical_fisher).parameters["precision"].default is autocast


@pytest.mark.parametrize("estimator", ["per-sample", "batch"])
def test_fisher_under_bf16_autocast_accumulates_in_fp32(estimator, monkeypatch):
    """With the forward in bf16 autocast (forced on CPU here, as CUDA runs it), the hooks get bf16 gradients but every
    product, square and sum is fp32 and the result float64, within bf16 rounding of the fp32 Fisher."""
    model, data, loss_fn = fisher_setup()
    model.float()
    batches = [(x.float(), y) for x, y in data.batches(4)]
    reference = empirical_fisher(model, batches, loss_fn, estimator)
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    real = harness_fisher.per_sample_square_sum

    def spy(g, x, dtype):
        out = real(g, x, dtype)
        seen.append((g.dtype, out.dtype))
        return out

    monkeypatch.setattr(harness_fisher, "per_sample_square_sum", spy)
    bf16 = lambda device: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    fisher = empirical_fisher(model, batches, loss_fn, estimator, precision=bf16)
    if estimator == "per-sample":
        assert seen and all(s == (torch.bfloat16, torch.float32) for s in seen)
    for n in fisher:
        assert fisher[n].dtype == torch.float64 and bool((fisher[n] > 0).any())
        assert not torch.equal(fisher[n], reference[n])  # the bf16 forward did run
        torch.testing.assert_close(fisher[n], reference[n], rtol=0.1, atol=1e-3 * float(reference[n].abs().max()))
