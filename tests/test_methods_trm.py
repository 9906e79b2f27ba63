"""TRM-recon (a reconstruction from the abstract of arXiv 2605.08311, see methods/trm.py): the pure math of
harness/math/trajectory_merge.py on tiny problems, the method on the embedded benchmark (each of the three losses matters),
and the trainer's first-steps gradient-norm record."""

from __future__ import annotations

import math

import pytest
import torch

from harness.config import ExecConfig
from harness.math import trajectory_merge as tm
from harness.resolve import resolve
from harness.train.setup import build
from harness.train.trainer import GRAD_NORM_STEPS, run_tasks
from tests.conftest import FAST

QUIET = ExecConfig(progress=False)


# ---- pure math ---------------------------------------------------------------------------------------------------


def test_checkpoint_epochs_are_evenly_spaced_and_end_at_the_last_epoch():
    assert tm.checkpoint_epochs(10, 3) == [3, 6, 9]
    assert tm.checkpoint_epochs(10, 1) == [9]
    assert tm.checkpoint_epochs(9, 3) == [2, 5, 8]
    assert tm.checkpoint_epochs(2, 3) == [0, 1]  # fewer epochs than K: every epoch
    assert tm.checkpoint_epochs(1, 3) == [0]


def _tiny(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = {"a": torch.randn(4, 3, generator=g, dtype=torch.float64), "b": torch.randn(5, 4, generator=g, dtype=torch.float64)}
    points = [{n: w + 0.3 * torch.randn(w.shape, generator=g, dtype=torch.float64) for n, w in base.items()} for _ in range(3)]
    return g, base, points


def test_one_hot_coefficients_reproduce_a_checkpoint():
    _, base, points = _tiny()
    dirs = tm.stack_directions([{n: p[n] - base[n] for n in base} for p in points])
    for k in range(3):
        for per_layer in (True, False):
            c = torch.zeros((3, 2) if per_layer else (3,), dtype=torch.float64)
            c[k] = 1.0
            merged = tm.combine(base, dirs, c)
            for n in base:
                torch.testing.assert_close(merged[n], points[k][n], rtol=0, atol=1e-14)
    # zero coefficients: the previous merged model; per-layer coefficients act on their own matrix only
    c = torch.zeros(3, 2, dtype=torch.float64)
    c[2, 1] = 0.5  # sorted layers: a, b
    merged = tm.combine(base, dirs, c)
    torch.testing.assert_close(merged["a"], base["a"], rtol=0, atol=0)
    torch.testing.assert_close(merged["b"], base["b"] + 0.5 * (points[2]["b"] - base["b"]), rtol=0, atol=1e-14)


def test_init_coefficients_and_lora_product():
    c = tm.init_coefficients(3, 1, 5, per_layer=True, init_last=0.5, init_other=0.0)
    assert c.shape == (4, 5) and bool((c[2] == 0.5).all()) and float(c.abs().sum()) == 2.5
    assert tm.init_coefficients(2, 0, 5, per_layer=False).tolist() == [0.0, 0.5]
    a, b = torch.randn(2, 6, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(tm.lora_product(a, b, 2.0), 2.0 * b @ a)
    g = torch.Generator().manual_seed(0)
    r = tm.random_like_norm(b @ a, g)
    assert float(r.norm()) == pytest.approx(float((b @ a).norm()), rel=1e-12)


def test_hinge_is_zero_above_g0_and_linear_below():
    gn = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    h = tm.gradient_hinge(gn, 1.0)
    assert h.tolist() == [0.5, 0.0, 0.0]
    h.sum().backward()
    assert gn.grad.tolist() == [-1.0, 0.0, 0.0]


def test_consistency_kl_is_zero_for_equal_predictions_and_matches_the_formula():
    p, q = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert float(tm.consistency_kl(p, p, 2.0)) == pytest.approx(0.0, abs=1e-12)
    ps, qs = torch.softmax(p / 2, 1), torch.softmax(q / 2, 1)
    expected = 4.0 * float((ps * (ps.log() - qs.log())).sum(1).mean())
    assert float(tm.consistency_kl(p, q, 2.0)) == pytest.approx(expected, rel=1e-6)
    assert float(tm.consistency_kl(p[:, :0], q[:, :0], 2.0)) == 0.0


PROBE = torch.randn(3, 4, generator=torch.Generator().manual_seed(99), dtype=torch.float64)


def _tiny_forward(x):
    """Two-layer net over the matrices {a: (4,3), b: (5,4)}: 5 logits, the first 2 are the "old" classes; and a
    fixed 3-class probe head on the same hidden features."""
    def forward(w):
        h = torch.tanh(x @ w["a"].T)
        return h @ w["b"].T, h @ PROBE.T

    return forward


@pytest.mark.parametrize("per_layer", [True, False])
def test_objective_gradient_matches_finite_differences(per_layer):
    g, base, points = _tiny(1)
    dirs = tm.stack_directions([{n: p[n] - base[n] for n in base} for p in points])
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randint(3, (6,), generator=g)
    prev_old = _tiny_forward(x)(base)[0][:, :2].detach()
    coef = torch.randn((3, 2) if per_layer else (3,), generator=g, dtype=torch.float64) * 0.5
    kw = dict(n_old=2, beta=0.7, gamma=0.3, temperature=2.0, ce_temperature=1.5, g0=50.0,  # hinge active
              probe_labels=torch.randint(3, (6,), generator=g))

    def f(c):
        return tm.trm_objective(_tiny_forward(x), base, dirs, c, y, prev_old, **kw)

    c = coef.clone().requires_grad_(True)
    loss, terms = f(c)
    assert terms["gradient"] > 0 and terms["consistency"] > 0 and terms["align"] > 0
    (grad,) = torch.autograd.grad(loss, [c])
    fd = torch.zeros_like(coef)
    eps = 1e-6
    for i in range(coef.numel()):
        e = torch.zeros_like(coef).view(-1)
        e[i] = eps
        e = e.view_as(coef)
        fd.view(-1)[i] = (f(coef + e)[0] - f(coef - e)[0]) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)
    # the total is the documented weighted sum of the terms
    assert terms["total"] == pytest.approx(terms["align"] + 0.7 * terms["consistency"] + 0.3 * terms["gradient"])


def test_switched_off_terms_leave_the_total():
    _, base, points = _tiny(2)
    dirs = tm.stack_directions([{n: p[n] - base[n] for n in base} for p in points])
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    prev_old = _tiny_forward(x)(base)[0][:, :2]
    c = tm.init_coefficients(3, 0, 2, per_layer=True, dtype=torch.float64)
    only = {}
    for key in ("align", "consistency", "gradient"):
        flags = {k: k == key for k in ("align", "consistency", "gradient")}
        _, terms = tm.trm_objective(_tiny_forward(x), base, dirs, c, y, prev_old, n_old=2, g0=50.0, beta=1.0,
                                    gamma=1.0, probe_labels=torch.tensor([2, 0, 1, 1, 0]), **flags)
        only[key] = terms["total"]
    assert only["align"] == pytest.approx(terms["align"])
    assert only["consistency"] == pytest.approx(terms["consistency"])
    assert only["gradient"] == pytest.approx(terms["gradient"])


# ---- the method on the embedded benchmark ------------------------------------------------------------------------

# Two epochs: ≥ GRAD_NORM_STEPS steps per task and a trajectory snapshot (K = 3 > 2 epochs: after epoch 0).
# g0_ratio 5: the probe hinge is active throughout these short runs (the default 1.0 only asks for θ̂_{t−1}'s value).
BASE = {**FAST, "train.epochs": 2, "method.g0_ratio": 5.0}


def _run(overrides: dict, tasks: int = 2):
    cfg = resolve("split-digits-2x5", "trm", seed=0, overrides={**BASE, **overrides})
    s = build(cfg, QUIET)
    state = run_tasks(s, QUIET, stop_after=tasks)
    return s, state


@pytest.fixture(scope="module")
def all_on():
    return _run({})


def _weights(s):
    return {n: w.detach().clone() for n, w in s.model.merged_weights().items()}


def test_records_coefficients_losses_time_and_grad_norms(all_on):
    s, state = all_on
    assert s.model.adapters() == [] and s.method.snapshots == []
    r0, r1 = state.method_records
    assert r0["directions"] == ["epoch0", "end"]
    assert r1["directions"] == ["epoch0", "end", "previous"]  # θ̂_0 − θ0 is a direction from task 1 on
    assert len(r1["coef"]["end"]) == len(r1["layers"]) and r1["merge_seconds"] > 0
    assert {"align", "consistency", "gradient", "grad_norm", "total"} <= set(r1["last"]) and r1["g0"] > 0
    assert "consistency" not in r0["last"]  # no old classes in the first task
    # the trainer's gradient-norm diagnostic: N finite entries per task, for every task
    assert len(state.grad_norms) == 2
    for rec in state.grad_norms:
        for key in ("all", "backbone"):
            assert len(rec[key]) == GRAD_NORM_STEPS and all(math.isfinite(v) and v >= 0 for v in rec[key])
        assert all(a >= b for a, b in zip(rec["all"], rec["backbone"]))
        assert rec["backbone"][1] > 0  # the LoRA learns from the second step on (B = 0 at the first)


@pytest.mark.parametrize("off", ["align", "consistency", "gradient"])
def test_each_loss_changes_the_merge(all_on, off):
    s_on, state_on = all_on
    s_off, state_off = _run({f"method.{off}": False})
    w_on, w_off = _weights(s_on), _weights(s_off)
    assert any(not torch.equal(w_on[n], w_off[n]) for n in w_on), f"switching off {off} changed nothing"
    assert state_off.method_records[1]["coef"] != state_on.method_records[1]["coef"]


def _align_and_next_start(overrides: dict) -> tuple[float, float]:
    """(CE of task 0's head on all of task 0's training data at θ̂_0, mean LoRA gradient norm over task 1's first
    steps — the trainer's `grad_norms`, i.e. the next task's start gradient)."""
    import torch.nn.functional as F

    cfg = resolve("split-digits-2x5", "trm", seed=0, overrides={**BASE, **overrides})
    s = build(cfg, QUIET)
    state = run_tasks(s, QUIET, stop_after=1)
    t0, model = s.stream.tasks[0], s.model
    model.eval()
    ce = n = 0.0
    with torch.no_grad():
        for x, y in s.train_bank.iterate(t0.train_indices, 256):
            logits = model.heads.heads[0](model.features(x)).float() / cfg.train.temperature
            ce += float(F.cross_entropy(logits, y - t0.offset, reduction="sum"))
            n += len(y)
    state = run_tasks(s, QUIET, state=state, stop_after=2)
    start = state.grad_norms[1]["backbone"]
    return ce / n, sum(start) / len(start)


ALIGN_TOLERANCE = 0.01  # allowed rise of task 0's CE (≈ 0.6 % of its value here) for the gradient term


def test_gradient_term_raises_the_next_task_start_gradient_without_giving_up_alignment(all_on):
    """The probe hinge (active here: g0_ratio 5) makes θ̂_0 more responsive for task 1 — a larger LoRA gradient over
    task 1's first steps than the same run with `gradient: false` — while task 0's alignment loss rises by less than
    ALIGN_TOLERANCE. (On these 2-epoch runs the effect is small, ≈ 0.5 %; it is a direction, not a size.)"""
    ce_on, start_on = _align_and_next_start({})
    ce_off, start_off = _align_and_next_start({"method.gradient": False})
    assert start_on > start_off, (start_on, start_off)
    assert ce_on <= ce_off + ALIGN_TOLERANCE, (ce_on, ce_off)
    s, state = all_on
    assert state.method_records[0]["first"]["gradient"] > 0  # the hinge was active


@pytest.mark.parametrize("per_layer", [True, False])
def test_end_task_writes_the_recorded_combination_and_drops_the_lora(per_layer):
    """θ̂_t = θ̂_{t−1} + Σ_j c*_j d_j with the recorded c* (tiny model, float64): task 0 has the end point only, task 1
    the end point and θ̂_0 − θ0; the snapshot taken in end_epoch is the extra trajectory direction."""
    from tests.test_methods_pm import FakeData, begin, exact_delta, make_method, make_model, make_task, weights

    model = make_model()
    method = make_method("trm", steps=3, per_layer=per_layer, g0_ratio=5.0)
    w0 = weights(model)
    for i in range(2):
        task = make_task(i)
        name = begin(method, model, task, seed=90 + i)
        prev = weights(model)
        mid = exact_delta(model, name)
        method.end_epoch(model, task, tm.checkpoint_epochs(method.train_cfg.epochs, 3)[0])  # a trajectory snapshot
        with torch.no_grad():
            for m in model.lora_layers().values():
                m.lora_B[name].weight.mul_(2.0)  # "training" moves on: the end point is 2 × the snapshot
        end = {n: d.to(torch.float64) for n, d in model.delta(name).items()}  # what the method merges (fp32 ΔW)
        method.end_task(model, task, FakeData(task, seed=95 + i))
        rec = method.record
        expected_dirs = ["epoch3", "end"] + (["previous"] if i else [])
        assert rec["directions"] == expected_dirs and model.adapters() == [] and method.snapshots == []
        layers = rec["layers"]
        for li, n in enumerate(layers):
            c = {k: (v[li] if per_layer else v) for k, v in rec["coef"].items()}
            exp = prev[n] + c["epoch3"] * mid[n] + c["end"] * end[n]
            if i:
                exp = exp + c["previous"] * (prev[n] - w0[n])
            torch.testing.assert_close(weights(model)[n], exp, rtol=1e-10, atol=1e-10)
        assert rec["coef_mean"]["end"] != 0.5  # the coefficients moved


def test_state_is_constant_and_has_no_task_data(all_on):
    s, _ = all_on
    state = s.method.state_dict()
    assert set(state) == {"w0", "snapshots"} and state["snapshots"] == []
    assert set(state["w0"]) == set(s.model.merged_weights())


def test_mid_task_resume_keeps_the_trajectory_and_grad_norms(results):
    """Killed after epoch 1 of task 1 (3 epochs, K = 3 ⇒ snapshots after epochs 0 and 1): the resumed run ends with
    the same accuracies, coefficients and first-steps gradient norms as an uninterrupted one."""
    from harness.store import run_dir
    from harness.train.run import execute
    import json

    import methods.trm as trm

    over = {**BASE, "train.epochs": 3}
    cfg = resolve("split-digits-2x5", "trm", seed=1, overrides=over)
    ref = run_tasks(build(cfg, QUIET), QUIET)
    original = trm.TRM.end_epoch

    def crash(self, model, task, epoch):
        original(self, model, task, epoch)
        if task.index == 1 and epoch == 2:
            raise KeyboardInterrupt("simulated kill")

    trm.TRM.end_epoch = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            execute(cfg, QUIET)
    finally:
        trm.TRM.end_epoch = original
    d = run_dir(cfg)
    ep = torch.load(d / "checkpoint.epoch.pt", weights_only=False)
    assert (ep["task"], ep["epochs_done"]) == (1, 2) and len(ep["method"]["snapshots"]) == 2
    assert execute(cfg, QUIET).status == "done"
    result = json.loads((d / "result.json").read_text())
    assert result["acc_matrix"] == ref.acc
    assert result["grad_norms"] == ref.grad_norms
    strip = lambda recs: [{k: v for k, v in r.items() if k != "merge_seconds"} for r in recs]  # noqa: E731
    assert strip(result["method_records"]) == strip(ref.method_records)


def test_probe_uses_seeded_random_labels_and_the_ce_temperature_everywhere(monkeypatch):
    """In a real run with the CE temperature at 30 (P&M's setting): every probe CE — g0's at θ̂_{t−1} and the
    objective's — and the objective's task CE divide the logits by 30, and the probe labels are the seeded random
    draws of generator(seed, 'trm-probe-labels', t), one per step — never the current task's labels (whose gradient
    at a fitted model is small: the under-fitting reward the probe was introduced to remove)."""
    from harness.core.seeding import generator

    probe_temps: list[float] = []
    steps: list[dict] = []
    real_probe, real_objective = tm.probe_loss, tm.trm_objective

    def probe_spy(logits, labels, ce_temperature):
        probe_temps.append(ce_temperature)
        return real_probe(logits, labels, ce_temperature)

    def objective_spy(*args, **kwargs):
        steps.append({"y_local": args[4].clone(), "probe": kwargs["probe_labels"].clone(),
                      "ce_temperature": kwargs["ce_temperature"]})
        return real_objective(*args, **kwargs)

    monkeypatch.setattr(tm, "probe_loss", probe_spy)
    monkeypatch.setattr(tm, "trm_objective", objective_spy)
    cfg = resolve("split-digits-2x5", "trm", seed=3, overrides={**BASE, "train.temperature": 30.0})
    s = build(cfg, QUIET)
    run_tasks(s, QUIET, stop_after=1)
    assert steps and probe_temps and set(probe_temps) == {30.0}
    assert len(probe_temps) == len(steps) + 1  # g0 once at the start point, then one per objective step
    assert {st["ce_temperature"] for st in steps} == {30.0}
    task = s.stream.tasks[0]
    g = generator(cfg.seed, "trm-probe-labels", task.index)
    for st in steps:
        want = torch.randint(task.num_classes, st["y_local"].shape, generator=g)
        assert torch.equal(st["probe"], want)
    assert any(not torch.equal(st["probe"], st["y_local"]) for st in steps)
