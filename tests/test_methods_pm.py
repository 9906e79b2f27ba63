"""P&M and the merging baselines on the tiny "vit-micro-test" model (float64 where exactness matters):
the Fisher helper against brute force, the perturbation, and each method's merge against the batch formulas."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from harness.config import RunConfig, TrainConfig
from harness.core.seeding import generator
from harness.data.stream import Task
from harness.math import continual_merging as C
from harness.math import merging as M
from harness.math.dop import dop_merge_matrix
from harness.math.fisher import empirical_fisher
from harness.method.base import Method, MethodContext
from harness.method.registry import get_method
from harness.model.backbone import BackboneConfig, CLModel
from methods.pm import SIGNS
from tests.fakes import N_CLS, FakeData, make_task

MINE = ["pm", "lora-m", "pm-gauss", "avg", "task-arith", "dare", "ties", "magmax", "coma", "cofima", "ewc"]


def make_model() -> CLModel:
    return CLModel(BackboneConfig(preset="vit-micro-test"))


def make_method(name: str, seed: int = 0, **params) -> Method:
    cls = get_method(name)
    cfg = RunConfig(
        benchmark="split-digits-2x5",
        method=name,
        seed=seed,
        backbone=BackboneConfig(preset="vit-micro-test"),
        train=TrainConfig(batch_size=4, temperature=2.0),
        method_params=params,
    )
    return cls(cls.Params(**params), MethodContext(config=cfg, stream=None, device=torch.device("cpu")))


@torch.no_grad()
def randomize(model: CLModel, adapter: str, seed: int, scale: float = 0.3) -> None:
    """Stand-in for training: a random non-zero B (A is already random)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.lora_layers().values():
        b = m.lora_B[adapter].weight
        b.copy_(scale * torch.randn(b.shape, generator=g, dtype=b.dtype))


def exact_delta(model: CLModel, adapter: str) -> dict[str, torch.Tensor]:
    return {n: (m.lora_B[adapter].weight @ m.lora_A[adapter].weight).detach() * m.scaling[adapter]
            for n, m in model.lora_layers().items()}


def begin(method: Method, model: CLModel, task: Task, seed: int) -> str:
    method.begin_task(model, task)
    model.double()
    name = method.adapter_name(task)
    randomize(model, name, seed)
    return name


def weights(model: CLModel) -> dict[str, torch.Tensor]:
    return {n: w.detach().clone() for n, w in model.merged_weights().items()}


def capture(model: CLModel, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of every adapted layer in one forward."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, (a[0].detach(), out.detach())))
               for n, m in model.lora_layers().items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


# ---- P&M perturbation --------------------------------------------------------------------------------------------


def pm_setup(name: str = "pm"):
    model, method = make_model(), make_method(name)
    t0, t1 = make_task(0), make_task(1)
    begin(method, model, t0, seed=10)
    model.fold_adapter(method.adapter_name(t0), 0.7)
    begin(method, model, t1, seed=11)
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    return model, method, t1, x


def test_pm_perturbation_scales_only_the_current_lora_product():
    model, method, task, x = pm_setup()
    eps, name = method.params.epsilon, method.adapter_name(task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    delta = exact_delta(model, name)
    theta = weights(model)
    layers = model.lora_layers()
    for s in SIGNS:
        with method.perturbed(model, task, s):
            seen = capture(model, x)
            logits = model(x).detach()
        for n, (inp, out) in seen.items():
            expected = F.linear(inp, theta[n] + (1 + s * eps) * delta[n], layers[n].get_base_layer().bias)
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        # Same logits as a model whose merged weights hold θ̂ + (1 + sε)Δ: heads and merged weights are untouched.
        ref = copy.deepcopy(model)
        ref.add_to_weights(exact_delta(ref, name), 1 + s * eps)
        ref.drop_adapter(name)
        torch.testing.assert_close(logits, ref(x).detach(), rtol=1e-12, atol=1e-12)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert all(m.scaling[name] == 1.0 for m in layers.values())


def test_pm_gauss_perturbs_along_a_random_direction_of_the_task_vector_norm():
    model, method, task, x = pm_setup("pm-gauss")
    eps, name = method.params.epsilon, method.adapter_name(task)
    theta, delta = weights(model), exact_delta(model, name)
    fp32_delta = model.delta(name)
    layers = model.lora_layers()
    for s in (1, -1):
        # The documented rule: per adapted matrix (sorted names), N = n·‖Δ‖/‖n‖, n ~ N(0, I) from the method's generator.
        g = torch.Generator()
        g.set_state(method._rng.get_state())
        directions = {}
        for n in sorted(delta):
            noise = torch.randn(delta[n].shape, generator=g)
            directions[n] = (noise * (fp32_delta[n].norm() / noise.norm())).to(torch.float64)
        with method.perturbed(model, task, s):
            seen = capture(model, x)
        for n, (inp, out) in seen.items():
            expected = F.linear(inp, theta[n] + delta[n] + s * eps * directions[n], layers[n].get_base_layer().bias)
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(directions[n].norm(), delta[n].norm(), rtol=1e-6, atol=0)
            cos = float((directions[n] * delta[n]).sum() / (directions[n].norm() * delta[n].norm()))
            assert abs(cos) < 0.5
    assert all(torch.equal(theta[n], w) for n, w in weights(model).items())


def test_pm_draws_are_seeded_and_the_loss_is_one_of_the_three_perturbed_losses():
    model, method, task, x = pm_setup()
    y = task.offset + torch.arange(6) % N_CLS
    losses = []
    for s in SIGNS:
        with method.perturbed(model, task, s):
            losses.append(float(Method.training_loss(method, model, x, y, task).detach()))
    assert len(set(losses)) == 3
    rng = torch.get_rng_state()
    values = [float(method.training_loss(model, x, y, task).detach()) for _ in range(12)]
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is not used
    assert set(values) <= set(losses) and len(set(values)) > 1
    # Same run seed and task → same draws; another task → other draws.
    a, b, c = make_method("pm"), make_method("pm"), make_method("pm")
    for m, t in ((a, 1), (b, 1), (c, 2)):
        m.begin_task(make_model(), make_task(t))
    da, db, dc = ([m.draw_sign() for _ in range(40)] for m in (a, b, c))
    assert da == db and da != dc and set(da) == {0, 1, -1}
    # lora-m never perturbs.
    lm = make_method("lora-m")
    assert lm.params.perturbation == "none" and make_method("pm-gauss").params.perturbation == "gaussian"


def test_pm_signs_are_uniform_over_the_three_values_within_binomial_bounds():
    """3000 draws: each count ~ Binomial(3000, 1/3), mean 1000, sd 25.8; ±5 sd catches e.g. p = (0.4, 0.3, 0.3)."""
    method = make_method("pm")
    method.begin_task(make_model(), make_task(0))
    draws = [method.draw_sign() for _ in range(3000)]
    counts = {s: draws.count(s) for s in SIGNS}
    sd = (3000 * (1 / 3) * (2 / 3)) ** 0.5
    assert sum(counts.values()) == 3000
    assert all(abs(c - 1000) < 5 * sd for c in counts.values()), counts
    assert method._counts == [counts[0], counts[1], counts[-1]]


def test_pm_draws_follow_the_run_seed():
    def draws(seed: int, task: int = 1) -> list[int]:
        m = make_method("pm", seed=seed)
        m.begin_task(make_model(), make_task(task))
        return [m.draw_sign() for _ in range(40)]

    assert draws(0) == draws(0) and draws(3) == draws(3)
    assert draws(0) != draws(3)


# ---- merges against the batch formulas ---------------------------------------------------------------------------


@pytest.mark.parametrize("per_module", [False, True])
def test_pm_end_task_equals_the_batch_formula(per_module):
    model, method = make_model(), make_method("pm", per_module=per_module)
    stars, fishers, alphas = [], [], []
    for i in range(3):
        task = make_task(i)
        name = begin(method, model, task, seed=20 + i)
        data = FakeData(task, seed=30 + i)
        theta_prev = weights(model)
        delta = {n: d.to(torch.float64) for n, d in model.delta(name).items()}  # what the method folds
        f = empirical_fisher(model, data.batches(4), lambda x, y: Method.training_loss(method, model, x, y, task))
        stars.append({n: theta_prev[n] + delta[n] for n in delta})
        fishers.append(f)
        expected = M.pm_alpha_batch(stars, fishers, theta_prev, delta, per_module=per_module)
        method.end_task(model, task, data)
        alpha = method.task_record(task)["alpha"]
        if per_module:
            assert set(alpha) == set(expected)
            for n in alpha:
                assert alpha[n] == pytest.approx(expected[n], rel=1e-10, abs=1e-14)
        else:
            assert alpha == pytest.approx(expected, rel=1e-10, abs=1e-14)
        coef = alpha if per_module else {n: alpha for n in delta}
        for n, w in weights(model).items():
            torch.testing.assert_close(w, theta_prev[n] + coef[n] * delta[n], rtol=1e-13, atol=1e-14)
        assert model.adapters() == []
        alphas.append(alpha)
    assert alphas[0] == 1.0 or all(v == 1.0 for v in alphas[0].values())


def expected_merge(name: str, params, taus: list, seed: int = 0) -> dict:
    if name == "avg":
        return M.average(taus)
    if name == "task-arith":
        return M.task_arithmetic(taus, params.lam)
    if name == "dare":  # the τ̃_i hold the dropped ΔW_i already (see the test)
        return M.average(taus)
    if name == "ties":
        return M.ties_merge(taus, params.density, params.lam)
    if name == "magmax":
        return M.magmax(taus, params.lam)
    if name == "dare-ties":  # batch form, written out: trim each τ̃_i, sign of the stacked sum (0 → majority), sum
        out = {}
        trimmed = [M.ties_trim(t, params.density) for t in taus]
        signs = {n: torch.sign(torch.stack([t[n] for t in trimmed]).sum(0)) for n in taus[0]}
        majority = torch.sign(sum(g.sum() for g in signs.values()))
        for n, g in signs.items():
            g = torch.where(g == 0, majority, g)
            stack = torch.stack([t[n] for t in trimmed])
            keep = torch.where(g > 0, stack > 0, stack < 0)
            out[n] = params.lam * (stack * keep).sum(0)
        return out
    if name == "ties-pairwise":
        merged = None
        for t in taus:
            merged = C.ties_pairwise_step(merged, t, params.density, params.lam)
        return merged
    if name == "opcm":
        merged, lam, norm_sum = None, 1.0, 0.0
        for i, t in enumerate(taus):
            merged, lam, norm_sum, _ = C.opcm_step(merged, lam, norm_sum, i + 1, t, params.alpha)
        return merged
    if name == "dop":
        merged = dict(taus[0])
        for t in taus[1:]:
            merged = {n: dop_merge_matrix(torch.zeros((), dtype=t[n].dtype), merged[n], t[n], steps=params.steps)[0]
                      for n in t}
        return merged
    raise KeyError(name)


@pytest.mark.parametrize(
    "name,params",
    [("avg", {}), ("task-arith", {}), ("dare", {}), ("ties", {}), ("magmax", {}),
     ("avg", {"start": "sequential"}), ("magmax", {"start": "pretrained"}), ("ties", {"start": "merged"}),
     ("dare-ties", {}), ("ties-pairwise", {}), ("opcm", {}), ("dop", {"steps": 5}), ("opcm", {"start": "merged"})],
)
def test_task_vector_methods_start_and_merge_as_documented(name, params):
    model, method = make_model().double(), make_method(name, **params)
    start_mode = method.params.start
    w0 = weights(model)
    taus: list = []
    merged = None
    for i in range(3):
        task = make_task(i)
        method.begin_task(model, task)
        model.double()
        if i == 0 or start_mode == "pretrained":
            start = {n: torch.zeros_like(w) for n, w in w0.items()}
        else:
            start = merged if start_mode == "merged" else taus[-1]
        for n, w in weights(model).items():
            torch.testing.assert_close(w, w0[n] + start[n], rtol=1e-13, atol=1e-14)
        adapter = method.adapter_name(task)
        randomize(model, adapter, 40 + i)
        delta = model.delta(adapter)
        if name in ("dare", "dare-ties"):  # DARE drops and rescales the task's own ΔW_t only, never the start's part
            delta = M.dare(delta, method.params.p, generator(0, "dare", i))
        taus.append({n: start[n] + delta[n] for n in delta})
        method.end_task(model, task, None)
        merged = expected_merge(name, method.params, taus)
        for n, w in weights(model).items():
            torch.testing.assert_close(w - w0[n], merged[n].to(w.dtype), rtol=1e-10, atol=1e-12)
        assert model.adapters() == []


def test_dare_keeps_the_previous_merge_when_the_new_task_adds_nothing():
    """start "merged", ΔW_2 = 0: τ̃_2 = D̂_1 + DARE(0) = D̂_1, so D̂_2 = mean(τ̃_1, D̂_1) = D̂_1 exactly — the merged
    old entries are not dropped again (dropping τ_2 = D̂_1 + ΔW_2 would zero about half of them)."""
    model, method = make_model().double(), make_method("dare")
    w0 = weights(model)
    for i in range(2):
        task = make_task(i)
        method.begin_task(model, task)
        model.double()
        if i == 0:
            randomize(model, method.adapter_name(task), 45)
        method.end_task(model, task, None)  # task 1's LoRA keeps B = 0: ΔW_2 = 0
        if i == 0:
            d1 = {n: w - w0[n] for n, w in weights(model).items()}
            assert 0.3 < method.task_record(task)["kept_fraction"] < 0.7
    for n, w in weights(model).items():
        torch.testing.assert_close(w - w0[n], d1[n], rtol=1e-12, atol=1e-14)
        assert float(d1[n].abs().sum()) > 0


@pytest.mark.parametrize("name,w", [("coma", 0.5), ("cofima", 0.5), ("coma", 0.3), ("cofima", 0.3)])
def test_coma_and_cofima_merge_as_documented(name, w):
    model, method = make_model(), make_method(name, w=w)
    assert method.fisher_estimator() == ("batch" if name == "cofima" else "per-sample")
    f_prev = None
    for i in range(2):
        task = make_task(i)
        adapter = begin(method, model, task, seed=50 + i)
        data = FakeData(task, seed=60 + i)
        prev = weights(model)
        delta = {n: d.to(torch.float64) for n, d in model.delta(adapter).items()}
        new = {n: prev[n] + delta[n] for n in prev}
        f = empirical_fisher(model, data.batches(4), lambda x, y: Method.training_loss(method, model, x, y, task),
                             "batch")
        method.end_task(model, task, data)
        if i == 0:
            expected = new  # the first task is kept as trained
        elif name == "coma":
            expected = M.coma(prev, new, w)
        else:
            expected = M.cofima(prev, new, f_prev, f, w, 1e-4)
        for n, wt in weights(model).items():
            torch.testing.assert_close(wt, expected[n], rtol=1e-10, atol=1e-12)
        f_prev = {n: v.float() for n, v in f.items()}


def test_ewc_penalty_is_the_fisher_weighted_square_of_the_lora_product():
    model, method = make_model(), make_method("ewc", lam=10.0)
    t0, t1 = make_task(0), make_task(1)
    begin(method, model, t0, seed=70)
    method.end_task(model, t0, FakeData(t0, seed=71))
    assert method.fisher is not None
    name = begin(method, model, t1, seed=72)
    delta = exact_delta(model, name)
    expected = 0.5 * 10.0 * sum(float((method.fisher[n] * delta[n].square()).sum()) for n in delta)
    pen = method.penalty(model, t1)
    assert float(pen.detach()) == pytest.approx(expected, rel=1e-6)  # Fisher stored in fp32
    pen.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.adapter_parameters(name)[1::2])


@pytest.mark.parametrize("decay", [0.5, 0.2])
def test_ewc_online_fisher_is_the_source_ema_over_tasks(decay):
    """F starts at 0 (MagMax code's EMA): after task 1 F = (1−d)·F_1, after task 2 d(1−d)·F_1 + (1−d)·F_2, after
    task 3 d²(1−d)·F_1 + d(1−d)·F_2 + (1−d)·F_3, each F_t the argmax-label batch Fisher at task t's end point."""
    model, method = make_model(), make_method("ewc", lam=10.0, decay=decay)
    fs = []
    for i in range(3):
        task = make_task(i)
        begin(method, model, task, seed=90 + i)
        data = FakeData(task, seed=95 + i)
        fs.append(empirical_fisher(model, data.batches(4), method._fisher_loss(model, task), "batch"))
        method.end_task(model, task, data)
        k = len(fs)
        for n, f in method.fisher.items():
            expected = sum((1 - decay) * decay ** (k - 1 - j) * fj[n] for j, fj in enumerate(fs))
            torch.testing.assert_close(f, expected.float(), rtol=1e-5, atol=0)
    assert all(float(f.sum()) > 0 for f in fs[-1].values())


@pytest.mark.parametrize("name", MINE)
def test_state_round_trip_continues_identically(name):
    """Save the method's state after task 0, restore it into a fresh instance: task 1 merges to the same weights."""
    model, method = make_model(), make_method(name)
    t0, t1 = make_task(0), make_task(1)
    begin(method, model, t0, seed=80)
    method.end_task(model, t0, FakeData(t0, seed=81))
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    fresh = make_method(name)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    results = []
    for m, mdl in ((method, model), (fresh, copy.deepcopy(model))):
        begin(m, mdl, t1, seed=82)
        m.end_task(mdl, t1, FakeData(t1, seed=83))
        results.append(weights(mdl))
    for n in results[0]:
        assert torch.equal(results[0][n], results[1][n])
    assert type(method).constant_memory is True


def test_pm_mid_task_rng_state_restores_draws_and_counts():
    a, b = make_method("pm"), make_method("pm")
    task = make_task(1)
    a.begin_task(make_model(), task)
    [a.draw_sign() for _ in range(17)]
    saved = a.rng_state()
    b.begin_task(make_model(), task)  # the trainer replays begin_task, then restores the generators
    b.load_rng_state(saved)
    assert [a.draw_sign() for _ in range(20)] == [b.draw_sign() for _ in range(20)]
    assert a._counts == b._counts and sum(a._counts) == 37
