"""InfLoRA and BECAME: the subspace math (harness/math/subspace.py) and BECAME's λ (harness/math/became_math.py) on small exact
problems, the methods' constraints on the tiny "vit-micro-test" model (float64), mid-task resume, and a property of
InfLoRA end to end (old tasks' k/v outputs move much less than under sequential LoRA)."""

from __future__ import annotations

import functools
import json
import math
from types import SimpleNamespace

import pytest
import torch

from harness.config import ExecConfig, RunConfig, TrainConfig
from harness.core.errors import ConfigError
from harness.math import subspace as S
from harness.math.became_math import became_lambda, bilinear, objective, quad
from harness.method.base import MethodContext
from harness.method.registry import get_method
from harness.model.backbone import BackboneConfig, CLModel
from harness.resolve import resolve
from harness.store import run_dir
from harness.train.run import execute
from harness.train.setup import build
from harness.train.trainer import run_tasks
from tests import fakes
from tests.conftest import FAST
from tests.fakes import N_CLS

QUIET = ExecConfig(progress=False)
D = 12


def orthonormal(d: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64)).Q


def representation(d: int, n: int, seed: int, decay: float = 0.7) -> torch.Tensor:
    """d × n with a geometrically decaying spectrum (a realistic input covariance/representation)."""
    g = torch.Generator().manual_seed(seed)
    u = orthonormal(d, d, seed + 1)
    s = decay ** torch.arange(d, dtype=torch.float64)
    return u @ torch.diag(s) @ torch.randn(d, n, generator=g, dtype=torch.float64)


def captured(basis: torch.Tensor, kind: str, rep: torch.Tensor) -> float:
    return float((S.old_projector(basis, kind) @ rep).square().sum() / rep.square().sum())


# ---- subspace math ---------------------------------------------------------------------------------------------------
def test_covariance_is_the_uncentred_token_mean_in_any_batching():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 4, generator=g, dtype=torch.float64) + 1.0  # 6 samples × 5 tokens, non-zero mean
    acc = S.CovarianceAccumulator(4)
    acc.add(x[:2])
    acc.add(x[2:])
    flat = x.reshape(-1, 4)
    assert torch.allclose(acc.mean(), flat.T @ flat / 30, atol=1e-12)


@pytest.mark.parametrize("eps", [0.5, 0.9, 0.99])
def test_gpm_update_captures_eps_with_the_fewest_directions(eps):
    r0 = representation(D, 40, seed=1)
    b, kind = S.gpm_update(S.empty_basis(D), "remove", r0, eps)
    assert kind == "remove" or b.shape[1] < D  # a switch leaves a proper complement
    assert torch.allclose(b.T @ b, torch.eye(b.shape[1], dtype=torch.float64), atol=1e-10)
    assert captured(b, kind, r0) >= eps - 1e-12
    # minimal: the best (k−1)-dimensional subspace (top singular vectors) captures less than ε
    k = D - b.shape[1] if kind == "retain" else b.shape[1]
    u, s, _ = torch.linalg.svd(r0, full_matrices=False)
    assert float(s[: k - 1].square().sum() / s.square().sum()) < eps
    # a second task: the grown space captures ε of *its* energy, and one added direction fewer does not
    r1 = representation(D, 40, seed=7, decay=0.8)
    if kind == "remove" and captured(b, kind, r1) < eps:
        b1, kind1 = S.gpm_update(b, kind, r1, eps)
        assert captured(b1, kind1, r1) >= eps - 1e-12
        old = S.old_projector(b1, kind1)
        assert torch.allclose(old @ S.old_projector(b, kind), S.old_projector(b, kind), atol=1e-10)  # old kept
        if kind1 == "remove":
            assert captured(b1[:, :-1], "remove", r1) < eps


@pytest.mark.parametrize("eps", [0.8, 0.95])
def test_remove_and_retain_bases_give_the_same_old_space(eps):
    old = orthonormal(D, 4, seed=3)
    rep = representation(D, 30, seed=4)
    b_remove, k_remove = S.gpm_update(old, "remove", rep, eps)
    b_retain, k_retain = S.gpm_update(S.complement(old), "retain", rep, eps)
    assert k_retain == "retain"
    assert torch.allclose(S.old_projector(b_remove, k_remove), S.old_projector(b_retain, k_retain), atol=1e-9)
    assert torch.allclose(S.free_projector(b_remove, k_remove), S.free_projector(b_retain, k_retain), atol=1e-9)


def test_switch_to_retain_past_half_the_dimension_keeps_the_projector():
    old = orthonormal(D, 5, seed=5)  # 5 ≤ D/2: stays 'remove'
    rep = representation(D, 30, seed=6, decay=0.95)  # flat spectrum: adds several directions
    resid = (torch.eye(D, dtype=torch.float64) - old @ old.T) @ rep
    u = torch.linalg.svd(resid, full_matrices=False).U
    b, kind = S.gpm_update(old, "remove", rep, 0.9)
    assert kind == "retain" and b.shape[1] < D / 2
    k_old = D - b.shape[1]
    expected = torch.cat([old, u[:, : k_old - 5]], dim=1)  # what the 'remove' basis would have been
    assert torch.allclose(S.old_projector(b, kind), expected @ expected.T, atol=1e-9)


def test_threshold_schedule():
    assert S.threshold(0, 10, 0.95, 1.0) == 0.95
    assert math.isclose(S.threshold(5, 10, 0.97, 1.0), 0.985)


@pytest.mark.parametrize("kind", ["remove", "retain"])
def test_inflora_down_is_outside_the_old_space_and_spans_the_top_new_directions(kind):
    old = orthonormal(D, 4, seed=8)
    basis = old if kind == "remove" else S.complement(old)
    c = representation(D, 50, seed=9)
    cov = c @ c.T / 50
    a = S.inflora_down(cov, basis, kind, rank=3)
    assert a.shape == (3, D)
    assert (a @ old).abs().max() < 1e-12  # rows ⟂ old inputs: B·A·x_old = 0
    assert torch.allclose(a @ a.T, torch.eye(3, dtype=torch.float64) / 3, atol=1e-12)  # orthonormal / √3
    p = torch.eye(D, dtype=torch.float64) - old @ old.T
    u = torch.linalg.svd(p @ cov, full_matrices=False).U[:, :3]
    assert torch.allclose(a.T @ a * 3, u @ u.T, atol=1e-9)  # the top-3 singular subspace of (I − MMᵀ)C


def test_inflora_down_stays_outside_the_old_space_when_it_is_almost_full():
    old = orthonormal(D, D - 1, seed=10)  # one free direction, rank 3
    basis, kind = S.complement(old), "retain"
    a = S.inflora_down(torch.eye(D, dtype=torch.float64), basis, kind, rank=3)
    assert (a @ old).abs().max() < 1e-12


# ---- BECAME's λ -----------------------------------------------------------------------------------------------------
def _dicts(seed: int):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a": (3, 4), "b": (5,)}
    delta = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    f_old = {n: torch.rand(s, generator=g, dtype=torch.float64) * 3 for n, s in shapes.items()}
    f_new = {n: torch.rand(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    return delta, f_old, f_new


def _posterior_on_segment(grid, theta_prev, theta_gp, theta_hat, f_old, f_new) -> torch.Tensor:
    """Q(θ(λ)) of the stated objective, evaluated entry by entry on the points θ(λ) = θ^GP + λ(θ̂ − θ^GP):
    Σ_p F_old[p](θ_p − θ*_{t−1,p})² + F_new[p](θ_p − θ̂_p)² (no algebra of the code under test)."""
    flat = lambda d: torch.cat([v.flatten() for v in d.values()])  # noqa: E731
    prev, gp, hat, fo, fn = map(flat, (theta_prev, theta_gp, theta_hat, f_old, f_new))
    theta = gp[None] + grid[:, None] * (hat - gp)[None]
    return (fo * (theta - prev) ** 2 + fn * (theta - hat) ** 2).sum(1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("with_gp_step", [False, True])
def test_became_lambda_minimises_the_posterior_on_the_segment_by_brute_force(seed, with_gp_step):
    """λ = argmin over [0, 1] of the Laplace objective on the segment θ^GP → θ̂, found on a grid of 20001 points;
    with a gradient-projected step g = θ^GP − θ*_{t−1} that has old-Fisher mass along Δ, the cross term moves λ."""
    delta, f_old, f_new = _dicts(seed)
    g = torch.Generator().manual_seed(100 + seed)
    theta_prev = {n: torch.randn(d.shape, generator=g, dtype=torch.float64) for n, d in delta.items()}
    # g correlated with −Δ (the stage-1 step points partly against the stage-2 one) or 0
    step = {n: (-0.6 * d + 0.3 * torch.randn(d.shape, generator=g, dtype=torch.float64)) if with_gp_step
            else torch.zeros_like(d) for n, d in delta.items()}
    theta_gp = {n: theta_prev[n] + step[n] for n in delta}
    theta_hat = {n: theta_gp[n] + delta[n] for n in delta}
    lam = became_lambda(delta, f_old, f_new, gp_step=step)
    grid = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64)
    q = _posterior_on_segment(grid, theta_prev, theta_gp, theta_hat, f_old, f_new)
    assert abs(lam - float(grid[q.argmin()])) <= 1e-4
    assert 0.0 <= lam <= 1.0
    old, new, cross = quad(f_old, delta), quad(f_new, delta), bilinear(f_old, step, delta)
    assert objective(lam, old, new, cross, quad(f_old, step)) <= float(q.min()) + 1e-9
    if with_gp_step:  # the case where the term matters: dropping it gives another λ
        assert abs(became_lambda(delta, f_old, f_new) - lam) > 0.05
    else:
        assert became_lambda(delta, f_old, f_new) == lam


def test_became_lambda_edge_cases():
    delta, f_old, f_new = _dicts(0)
    assert became_lambda(delta, None, f_new) == 1.0  # first task
    zero = {n: torch.zeros_like(v) for n, v in delta.items()}
    assert became_lambda(zero, f_old, f_new) == 1.0  # Δ = 0
    assert became_lambda(delta, {n: torch.zeros_like(v) for n, v in f_old.items()}, f_new) == 1.0


# ---- methods on the micro model ----------------------------------------------------------------------------------


def make_method(name: str, epochs: int = 2, num_tasks: int = 2, **params):
    cls = get_method(name)
    cfg = RunConfig(benchmark="split-digits-2x5", method=name, backbone=BackboneConfig(preset="vit-micro-test"),
                    train=TrainConfig(batch_size=4, epochs=epochs), method_params=params)
    stream = SimpleNamespace(tasks=[None] * num_tasks)
    return cls(cls.Params(**params), MethodContext(config=cfg, stream=stream, device=torch.device("cpu")))


# 12 samples per task here (the P&M tests use 10)
make_task = functools.partial(fakes.make_task, n=12)
FakeData = functools.partial(fakes.FakeData, n=12)


@pytest.fixture
def float64():
    """Heads and adapters made during a test are float64 like the model (exact checks)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def micro_model() -> CLModel:
    return CLModel(BackboneConfig(preset="vit-micro-test")).double()


def test_params_validate():
    for name, bad in [("inflora", {"lamb": 0.0}), ("inflora", {"lamb": 0.9, "lame": 0.8}),
                      ("became", {"gp_fraction": 1.5}), ("became", {"lame": 1.2})]:
        with pytest.raises(ConfigError):
            get_method(name).Params(**bad).validate("method_params")


def test_inflora_trains_only_b_with_designed_a_outside_old_inputs(float64):
    model, method = micro_model(), make_method("inflora")
    t0, t1 = make_task(0), make_task(1)
    data0 = FakeData(t0, seed=0)
    method.ctx.train_bank = data0
    method.begin_task(model, t0)
    opt = torch.optim.SGD(method.parameter_groups(model, t0), lr=0.1)
    loss = method.training_loss(model, data0.x[:4], data0.y[:4], t0)
    loss.backward()
    opt.step()
    method.end_task(model, t0, data0)
    assert method.record["epsilon"] == 0.95
    data1 = FakeData(t1, seed=1)
    method.ctx.train_bank = data1
    method.begin_task(model, t1)
    name = method.adapter_name(t1)
    groups = S.lora_groups(model)
    for g, layers in groups.items():
        p_old = S.old_projector(method.gpm.bases[g], method.gpm.kinds[g])
        a_k, a_v = (model.lora_layers()[n].lora_A[name].weight for n in layers)
        assert torch.equal(a_k, a_v)
        assert (a_k @ p_old).norm() < 1e-10 * a_k.norm()
        assert not a_k.requires_grad
    trained = {id(p) for grp in method.parameter_groups(model, t1) for p in grp["params"]}
    lora = model.lora_layers().values()
    assert all(id(m.lora_B[name].weight) in trained and id(m.lora_A[name].weight) not in trained for m in lora)


def exact_delta(model: CLModel, name: str) -> dict[str, torch.Tensor]:
    """B·A·scaling in the model's dtype (CLModel.delta returns float32)."""
    return {n: (m.lora_B[name].weight @ m.lora_A[name].weight).detach() * m.scaling[name]
            for n, m in model.lora_layers().items()}


def _old_basis(model: CLModel, k: int, seed: int) -> dict[str, torch.Tensor]:
    d = model.embed_dim
    return {g: orthonormal(d, k, seed + i) for i, g in enumerate(S.lora_groups(model))}


@pytest.mark.parametrize("kind", ["remove", "retain"])
def test_became_stage_one_leaves_old_inputs_outputs_unchanged(kind, float64):
    """After AdamW steps in the gradient-projection stage, ΔW x_old = 0 for inputs in the old space (exact)."""
    model, method = micro_model(), make_method("became", epochs=2)
    old = _old_basis(model, k=10, seed=20)
    method.gpm.bases = {g: (o if kind == "remove" else S.complement(o)) for g, o in old.items()}
    method.gpm.kinds = {g: kind for g in old}
    task = make_task(1)
    model.heads.add(N_CLS, seed=0)  # task 0's head
    method.begin_task(model, task)
    data = FakeData(task, seed=2)
    opt = torch.optim.AdamW(method.parameter_groups(model, task), lr=0.05)
    name = method.adapter_name(task)
    for x, y in data.batches(4):
        loss = method.training_loss(model, x, y, task)
        opt.zero_grad()
        loss.backward()
        method.after_backward(model, task)
        opt.step()
    method.end_epoch(model, task, 0)  # stage switch: projection and snapshot
    assert method.snapshot is not None and not method.in_gp_stage()
    groups = S.lora_groups(model)
    for g, layers in groups.items():
        for n in layers:
            dw = exact_delta(model, name)[n]
            assert dw.norm() > 1e-3  # it did train
            assert (dw @ old[g]).norm() < 1e-10 * dw.norm()
            a, b = method.snapshot["lora"][n]
            assert ((b @ a) @ old[g]).norm() < 1e-10 * dw.norm()


def _became_fisher_brute(model, task, data, batch_size: int) -> dict[str, torch.Tensor]:
    """The authors' Fisher, written out: Σ_b |b|·(∂CE(current head, own argmax)/∂W_eff)² / N, via the batch estimator
    on one batch at a time (each batch's own squared mean gradient), so the weighting is done here."""
    from harness.math.fisher import empirical_fisher

    def loss_fn(x, y):
        logits = model.heads.heads[-1](model.features(x)).float()
        return torch.nn.functional.cross_entropy(logits, logits.argmax(1).detach())

    total, n = None, 0
    for x, y in data.batches(batch_size):
        f = empirical_fisher(model, [(x, y)], loss_fn, "batch")
        total = {k: v * len(y) for k, v in f.items()} if total is None else {k: total[k] + v * len(y) for k, v in f.items()}
        n += len(y)
    return {k: v / n for k, v in total.items()}


@pytest.mark.parametrize("lam_rule,accumulate", [("code", "merged"), ("derived", "trained")])
def test_became_merges_on_the_segment_with_the_fisher_lambda(float64, lam_rule, accumulate):
    """Default ("code"): λ = ΔᵀF_tΔ / (ΔᵀF_oldΔ + ΔᵀF_tΔ) without the cross term, F_t the authors' Fisher at θ̂_t, and
    the Fisher added to the accumulated one is a fresh pass at the merged point θ*_t. "derived"/"trained": our cross
    term −gᵀF_oldΔ and F_t itself accumulated."""
    model, method = micro_model(), make_method("became", epochs=2, lam_rule=lam_rule, accumulate=accumulate)
    t0 = make_task(0)
    data = FakeData(t0, seed=3)
    method.fisher = {n: torch.rand(w.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
                     for n, w in model.merged_weights().items()}
    method.begin_task(model, t0)
    name = method.adapter_name(t0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.lora_layers().values():
            m.lora_B[name].weight.copy_(0.3 * torch.randn(m.lora_B[name].weight.shape, generator=g, dtype=torch.float64))
    method.end_epoch(model, t0, 0)  # θ^GP
    d_gp = exact_delta(model, name)
    head_gp = {k: v.clone() for k, v in model.heads.heads[-1].state_dict().items()}
    with torch.no_grad():
        for m in model.lora_layers().values():
            m.lora_B[name].weight.add_(0.2 * torch.randn(m.lora_B[name].weight.shape, generator=g, dtype=torch.float64))
        model.heads.heads[-1].weight.add_(1.0)
    d_hat, w0 = exact_delta(model, name), {n: w.clone() for n, w in model.merged_weights().items()}
    head_hat = {k: v.clone() for k, v in model.heads.heads[-1].state_dict().items()}
    f_old = dict(method.fisher)
    f_new = _became_fisher_brute(model, t0, data, method.train_cfg.batch_size)
    delta = {n: d_hat[n] - d_gp[n] for n in d_hat}
    with_cross = became_lambda(delta, f_old, f_new, gp_step=d_gp)  # θ*_{t−1} = w0, θ^GP = w0 + d_gp
    without = quad(f_new, delta) / (quad(f_old, delta) + quad(f_new, delta))
    assert 0.0 < with_cross < 1.0 and abs(with_cross - without) > 1e-3
    lam = without if lam_rule == "code" else with_cross
    method.end_task(model, t0, data)
    assert method.record["lambda"] == pytest.approx(lam, rel=1e-9)
    for n, w in model.merged_weights().items():
        assert torch.allclose(w, w0[n] + d_gp[n] + lam * delta[n], atol=1e-12)
    for k, v in model.heads.heads[-1].state_dict().items():
        assert torch.allclose(v, head_gp[k] + lam * (head_hat[k] - head_gp[k]), atol=1e-12)
    added = _became_fisher_brute(model, t0, data, method.train_cfg.batch_size) if accumulate == "merged" else f_new
    assert all(torch.allclose(method.fisher[n].double(), f_old[n] + added[n], rtol=1e-5, atol=1e-12) for n in f_new)
    if accumulate == "merged":  # the merged point's Fisher differs from θ̂_t's
        assert any(not torch.allclose(added[n], f_new[n], rtol=1e-3) for n in f_new)
    assert model.adapters() == [] and method.snapshot is None


def test_became_lambda_hand_case_authors_formula_and_derived_option():
    """The issue's hand case: Δ = (1, 1), F_old = (1, 0.2), F_new = (0.5, 0.5), g = (0.4, 0).
    Authors: 1 / (1.2 + 1) = 0.4545…; derived: (1 − 0.4) / 2.2 = 0.2727…"""
    d = {"w": torch.tensor([1.0, 1.0], dtype=torch.float64)}
    f_old = {"w": torch.tensor([1.0, 0.2], dtype=torch.float64)}
    f_new = {"w": torch.tensor([0.5, 0.5], dtype=torch.float64)}
    g = {"w": torch.tensor([0.4, 0.0], dtype=torch.float64)}
    assert became_lambda(d, f_old, f_new) == pytest.approx(1 / 2.2, abs=1e-15)
    assert became_lambda(d, f_old, f_new, gp_step=g) == pytest.approx(0.6 / 2.2, abs=1e-15)
    assert round(became_lambda(d, f_old, f_new), 3) == 0.455 and round(became_lambda(d, f_old, f_new, gp_step=g), 3) == 0.273


# ---- end to end ---------------------------------------------------------------------------------------------------------
def _kv_inputs(s, x: torch.Tensor) -> dict[str, torch.Tensor]:
    ins: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: ins.__setitem__(n, a[0].detach().reshape(-1, a[0].shape[-1])))
             for n, m in s.model.lora_layers().items()]
    try:
        with torch.no_grad():
            s.model.features(x)
    finally:
        for h in hooks:
            h.remove()
    return ins


def _old_kv_drift(method: str, seed: int) -> tuple[float, float]:
    """Task 1's change of the k/v projections' outputs on task-0 inputs (taken at θ*_0), relative to the outputs:
    ‖(W_1 − W_0)X_0‖ / ‖W_0 X_0‖ over all adapted layers; and the same per unit ‖W_1 − W_0‖."""
    cfg = resolve("split-digits-2x5", method, seed=seed, overrides=FAST)
    s = build(cfg, QUIET)
    state = run_tasks(s, QUIET, stop_after=1)
    x, _ = next(s.train_bank.iterate(s.stream.tasks[0].train_indices, 512))
    xs, w0 = _kv_inputs(s, x), {n: w.clone() for n, w in s.model.merged_weights().items()}
    run_tasks(s, QUIET, state=state)
    dw = {n: w - w0[n] for n, w in s.model.merged_weights().items()}
    change = sum(float((dw[n] @ xs[n].T).square().sum()) for n in xs) ** 0.5
    out = sum(float((w0[n] @ xs[n].T).square().sum()) for n in xs) ** 0.5
    size = sum(float(d.square().sum()) for d in dw.values()) ** 0.5
    return change / out, change / out / size


@pytest.mark.parametrize("seed", [0, 1])
def test_inflora_old_task_kv_outputs_move_less_than_seq_lora(seed):
    (inf, inf_unit), (seq, seq_unit) = _old_kv_drift("inflora", seed), _old_kv_drift("seq-lora", seed)
    assert seq > 0 and inf < seq and inf_unit < 0.75 * seq_unit, (inf, seq, inf_unit, seq_unit)


def test_became_records_lambda_per_task():
    cfg = resolve("split-digits-2x5", "became", seed=0, overrides={**FAST, "train.epochs": 2})
    state = run_tasks(build(cfg, QUIET), QUIET)
    lams = [r["lambda"] for r in state.method_records]
    assert lams[0] == 1.0 and 0.0 <= lams[1] <= 1.0


@pytest.mark.parametrize("method", ["inflora", "became"])
def test_crash_mid_task_resumes_exactly(results, monkeypatch, method):
    """Killed in the 3rd epoch of task 1 (BECAME: after its stage switch, so the θ^GP snapshot is restored)."""
    cfg = resolve("split-digits-2x5", method, seed=4, overrides={**FAST, "train.epochs": 3})
    reference = run_tasks(build(cfg, QUIET), QUIET)
    cls = get_method(method)
    original = cls.training_loss
    fakes.crash_in_task_1(monkeypatch, cls, cfg, epochs_done=2)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, QUIET)
    ep = torch.load(run_dir(cfg) / "checkpoint.epoch.pt", weights_only=False)
    assert (ep["task"], ep["epochs_done"]) == (1, 2)
    if method == "became":
        assert ep["method"]["snapshot"] is not None
    monkeypatch.setattr(cls, "training_loss", original)
    assert execute(cfg, QUIET).status == "done"
    result = json.loads((run_dir(cfg) / "result.json").read_text())
    assert result["acc_matrix"] == reference.acc
    assert result["method_records"] == json.loads(json.dumps(reference.method_records))
