"""Tunable MagMax and PAM (reconstruction): exact checks of their merge rules and penalty on small problems, and
each method's merge inside a real two-task run on the tiny test ViT."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness.config import ExecConfig
from harness.core.errors import ConfigError
from harness.core.seeding import generator
from harness.math import merging as M
from harness.method.base import Method
from harness.model.backbone import BackboneConfig, CLModel
from harness.resolve import resolve
from harness.train.setup import build
from harness.train.trainer import run_tasks
from methods.pam import lora_delta
from tests.conftest import FAST
from tests.fakes import make_task

QUIET = ExecConfig(progress=False)


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def counts(win: torch.Tensor, T: int) -> list[int]:
    return torch.bincount(win.reshape(-1), minlength=T).tolist()


def rand_tvs(seed: int, T: int, shapes: dict[str, tuple[int, ...]], scales: list[float] | None = None) -> list[M.Tensors]:
    gen = g(seed)
    scales = scales or [1.0] * T
    return [{n: s * torch.randn(sh, generator=gen, dtype=torch.float64) for n, sh in shapes.items()} for s in scales]


# ---- quotas ---------------------------------------------------------------------------------------------------------


def test_quotas_hand_worked_and_sum_to_n():
    assert M.quotas(10, [1, 1, 1]) == [4, 3, 3]  # remainder 1, round-robin from task 1
    assert M.quotas(11, [1, 1, 1]) == [4, 4, 3]
    assert M.quotas(100, [0.29, 0.71]) == [29, 71]  # exact: float n·w would floor 28.999… to 28
    # here the round-robin remainder cannot rescue a float floor: it would give the lost entry to task 1 → [72, 28]
    assert M.quotas(100, [0.71, 0.29]) == [71, 29]
    assert M.quotas(5, [0, 1, 1]) == [0, 3, 2]  # the round-robin skips zero-weight tasks
    assert M.quotas(7, [0, 1]) == [0, 7]
    assert M.quotas(12, [2, 4, 6]) == M.quotas(12, [1 / 6, 1 / 3, 1 / 2]) == [2, 4, 6]  # raw counts or fractions
    assert M.quotas(0, [1, 2]) == [0, 0]
    gen = g(0)
    for _ in range(300):
        T = int(torch.randint(1, 8, (1,), generator=gen))
        n = int(torch.randint(0, 500, (1,), generator=gen))
        w = (torch.rand(T, generator=gen) * (torch.rand(T, generator=gen) > 0.3)).tolist()
        if sum(w) == 0:
            w[0] = 1.0
        q = M.quotas(n, w)
        assert sum(q) == n and all(x >= 0 for x in q)
        assert all(x == 0 for x, wi in zip(q, w) if wi == 0)
        s = sum(w)
        assert all(abs(x - n * wi / s) < 1 + 1e-9 for x, wi in zip(q, w))  # ⌊n·w⌋ or one more
    for bad in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError):
            M.quotas(4, bad)


# ---- Tunable MagMax ------------------------------------------------------------------------------------------------

SHAPES = {"k": (6, 7), "v": (5, 9), "b": (13,)}


@pytest.mark.parametrize(
    "T,scales,weights",
    [
        (3, None, [1, 1, 1]),
        (4, None, [0.1, 0.2, 0.3, 0.4]),
        (5, [1, 1, 1, 1, 1], [5, 0, 1, 0, 3]),  # zero-quota tasks
        (4, [1, 1, 1, 100], [1, 1, 1, 1]),  # the last task wins (almost) everything under MagMax
        (4, [100, 1, 1, 1], [1, 2, 3, 4]),  # the first task wins everything: its overflow fills later tasks
        (5, [1, 100, 1, 1, 1], [1, 1, 1, 1, 10]),  # a middle task wins everything, the last one wants most
        (6, [1, 1, 1, 1, 1, 1000], [10, 1, 1, 1, 1, 1]),  # extreme imbalance both ways
        (2, None, [1, 0]),
    ],
)
def test_tunable_magmax_winner_counts_equal_quotas_and_values_come_from_the_winner(T, scales, weights):
    for seed in range(5):
        tvs = rand_tvs(seed, T, SHAPES, scales)
        winners: dict[str, torch.Tensor] = {}
        merged = M.tunable_magmax(tvs, weights, 0.5, g(seed), winners)
        assert list(merged) == list(SHAPES)
        for n, shape in SHAPES.items():
            numel = torch.Size(shape).numel()
            assert counts(winners[n], T) == M.quotas(numel, weights)
            stack = torch.stack([tv[n] for tv in tvs])
            assert torch.equal(merged[n], 0.5 * stack.gather(0, winners[n].unsqueeze(0)).squeeze(0))


def test_one_hot_preference_returns_that_task_vector():
    tvs = rand_tvs(1, 4, SHAPES, [1, 1, 50, 1])
    for k in range(4):
        w = [0.0] * 4
        w[k] = 1.0
        merged = M.tunable_magmax(tvs, w, 1.0, g(0))
        for n in SHAPES:
            assert torch.equal(merged[n], tvs[k][n])


def test_equals_magmax_when_its_winner_counts_are_the_quotas():
    """Σ counts = Σ quotas = n, so "every task within quota" means "every task exactly at quota": nothing is
    re-assigned and the result is MagMax's, ties to the later task included. (With different counts it is not.)"""
    tvs = rand_tvs(2, 4, {"w": (8, 10)})
    tvs[0]["w"][0, 0], tvs[3]["w"][0, 0] = 9.0, -9.0  # exact ties: MagMax gives them to the later task
    tvs[1]["w"][2, 3], tvs[2]["w"][2, 3] = -7.0, 7.0
    mm = M.magmax(tvs, 0.5)["w"]
    stack = torch.stack([tv["w"] for tv in tvs])
    mm_win = 3 - stack.abs().flip(0).argmax(0)
    assert mm_win[0, 0] == 3 and mm_win[2, 3] == 2
    c = counts(mm_win, 4)
    assert M.quotas(80, c) == c
    for seed in range(3):
        assert torch.equal(M.tunable_magmax(tvs, c, 0.5, g(seed))["w"], mm)
    # uniform preference on these unbalanced counts moves entries (and still meets the quotas)
    win: dict[str, torch.Tensor] = {}
    M.tunable_magmax(tvs, [1, 1, 1, 1], 0.5, g(0), win)
    assert counts(win["w"], 4) == [20, 20, 20, 20]


def test_ties_go_to_the_later_task_and_overflow_is_split_at_random():
    a = {"w": torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0, 6.0], dtype=torch.float64)}
    b = {"w": -a["w"]}  # |τ_1| = |τ_2| everywhere
    # quotas equal MagMax's counts (everything to task 2, the later one): MagMax itself
    assert torch.equal(M.tunable_magmax([a, b], [0, 1], 1.0, g(0))["w"], b["w"])
    assert torch.equal(M.tunable_magmax([a, b], [1, 0], 1.0, g(0))["w"], a["w"])
    seen = set()
    for seed in range(20):
        win: dict[str, torch.Tensor] = {}
        out = M.tunable_magmax([a, b], [1, 1], 1.0, g(seed), win)["w"]
        assert counts(win["w"], 2) == [3, 3]
        assert torch.equal(out.abs(), a["w"].abs())
        seen.add(tuple(win["w"].tolist()))
    assert len(seen) > 5  # which 3 entries task 1 takes back is random


def test_excess_goes_to_the_largest_earlier_task_vector():
    # q = [2, 1, 1]. MagMax: τ_3 wins entry 0, τ_2 entries 1..3, τ_1 nothing; τ_2 keeps one of 1..3 at random, the
    # two others go to τ_1, the only earlier task.
    t1 = {"w": torch.tensor([0.1, 1.0, 1.0, 1.0], dtype=torch.float64)}
    t2 = {"w": torch.tensor([0.2, 2.0, 2.0, 2.0], dtype=torch.float64)}
    t3 = {"w": torch.tensor([3.0, 0.0, 0.0, 0.0], dtype=torch.float64)}
    for seed in range(10):
        out = M.tunable_magmax([t1, t2, t3], [2, 1, 1], 1.0, g(seed))["w"]
        assert out[0] == 3.0 and sorted(out[1:].tolist()) == [1.0, 1.0, 2.0]
    # From the last task: its excess goes to the larger of the *earlier* ones at each entry (τ_2 > τ_1 here), then
    # τ_2's own excess to τ_1.
    big = {"w": torch.tensor([9.0, 9.0, 9.0, 9.0], dtype=torch.float64)}
    for seed in range(10):
        win: dict[str, torch.Tensor] = {}
        M.tunable_magmax([t1, t2, big], [1, 1, 2], 1.0, g(seed), win)
        assert counts(win["w"], 3) == [1, 1, 2]


def test_first_task_overflow_goes_by_magnitude_to_later_tasks_below_quota():
    # τ_1 wins all 4 entries; q = [1, 1, 2]; three random entries are freed. Among the later tasks τ_3 is the larger
    # at entries 0, 1 and τ_2 at entries 2, 3: a freed entry 0 or 1 always goes to τ_3 (its deficit 2 takes both).
    t1 = {"w": torch.tensor([50.0, 50.0, 50.0, 50.0], dtype=torch.float64)}
    t2 = {"w": torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)}
    t3 = {"w": torch.tensor([2.0, 2.0, 1.0, 1.0], dtype=torch.float64)}
    firsts = set()
    for seed in range(30):
        win: dict[str, torch.Tensor] = {}
        M.tunable_magmax([t1, t2, t3], [1, 1, 2], 1.0, g(seed), win)
        w = win["w"].tolist()
        assert counts(win["w"], 3) == [1, 1, 2]
        assert all(w[p] in (0, 2) for p in (0, 1))
        firsts.add(w.index(0))
    assert firsts == {0, 1, 2, 3}  # which entry task 1 keeps is random


def test_seeded_same_generator_same_result_and_lambda_is_a_plain_scale():
    tvs = rand_tvs(7, 5, SHAPES, [1, 30, 1, 1, 30])
    w = [3, 1, 1, 2, 1]
    a = M.tunable_magmax(tvs, w, 0.5, generator(0, "tunable-magmax", 4))
    b = M.tunable_magmax(tvs, w, 0.5, generator(0, "tunable-magmax", 4))
    c = M.tunable_magmax(tvs, w, 1.0, generator(0, "tunable-magmax", 4))
    d = M.tunable_magmax(tvs, w, 0.5, generator(1, "tunable-magmax", 4))
    assert all(torch.equal(a[n], b[n]) and torch.equal(a[n], 0.5 * c[n]) for n in SHAPES)
    assert any(not torch.equal(a[n], d[n]) for n in SHAPES)
    # draws do not depend on the order of the names in the dicts
    rev = [{n: tv[n] for n in reversed(list(SHAPES))} for tv in tvs]
    e = M.tunable_magmax(rev, w, 0.5, generator(0, "tunable-magmax", 4))
    assert all(torch.equal(a[n], e[n]) for n in SHAPES) and list(e) == list(reversed(list(SHAPES)))


def test_tunable_magmax_params_are_validated():
    from methods.tunable_magmax import Params

    for good in ("classes", "uniform", "test-samples", [1.0, 0.0]):
        Params(preference=good).validate("m")
    for bad in ("labels", [], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ConfigError):
            Params(preference=bad).validate("m")
    with pytest.raises(ConfigError):  # one weight per task of the stream
        build(resolve("split-digits-2x5", "tunable-magmax", overrides={**FAST, "method.preference": [1, 2, 3]}), QUIET)


@pytest.mark.parametrize("start", ["sequential", "pretrained", "merged"])
def test_tunable_magmax_stores_lora_factors_and_merges_exactly_the_dense_task_vectors(start):
    """The state holds each task's (A, B) (plus the dense start only for start "merged"); the merge after every task
    is bit-identical to `tunable_magmax` on the dense τ_i the test forms itself from the trained LoRA products."""
    from harness.config import RunConfig, TrainConfig
    from harness.method.base import MethodContext
    from harness.method.registry import get_method
    from tests.test_methods_pm import make_model, randomize, weights

    params = {"start": start, "preference": [1.0, 2.0, 4.0]}
    cfg = RunConfig(benchmark="split-digits-2x5", method="tunable-magmax", backbone=BackboneConfig(preset="vit-micro-test"),
                    train=TrainConfig(batch_size=4), method_params=params)
    stream = SimpleNamespace(tasks=[make_task(i) for i in range(3)])
    cls = get_method("tunable-magmax")
    model, method = make_model().double(), cls(cls.Params(**params), MethodContext(cfg, stream, torch.device("cpu")))
    w0 = weights(model)
    taus, merged = [], None
    for i in range(3):
        task = make_task(i)
        method.begin_task(model, task)
        model.double()
        adapter = method.adapter_name(task)
        randomize(model, adapter, 60 + i)
        delta = model.delta(adapter)
        start_tv = (None if i == 0 or start == "pretrained" else merged if start == "merged" else taus[-1])
        taus.append({n: (start_tv[n] + d if start_tv is not None else d).to(torch.float64) for n, d in delta.items()})
        method.end_task(model, task, None)
        want = M.tunable_magmax(taus, [1.0, 2.0, 4.0][: i + 1], 0.5, generator(0, "tunable-magmax", i))
        merged = want
        for n, w in weights(model).items():
            assert torch.equal(w, w0[n] + want[n])
    acc = method.acc_state()
    assert len(acc["factors"]) == 3 and "tvs" not in acc
    for fac in acc["factors"]:
        for n, (a, b) in fac.items():
            r = model._lora_config.r
            assert a.shape == (r, w0[n].shape[1]) and b.shape == (w0[n].shape[0], r)
    assert all((s is None) == (start != "merged") or i == 0 for i, s in enumerate(acc["starts"]))


def test_tunable_magmax_run_merges_the_stored_task_vectors():
    cfg = resolve("split-digits-2x5", "tunable-magmax", overrides={**FAST, "method.preference": [1.0, 3.0]})
    s = build(cfg, QUIET)
    state = run_tasks(s, QUIET)
    m = s.method
    assert len(m.tvs) == 2 and m.constant_memory is False
    assert state.method_records[1]["weights"] == [0.25, 0.75]
    assert state.method_records[0]["weights"] == [1.0]  # after task 1 only its own weight (renormalised prefix)
    want = M.tunable_magmax(m.tvs, [1.0, 3.0], 0.5, generator(cfg.seed, "tunable-magmax", 1))
    for n, w in s.model.merged_weights().items():
        assert torch.equal(w, m.w0[n] + want[n])
    # sequential start: task 2's vector contains task 1's (τ_2 = τ_1 + ΔW_2), MagMax's protocol
    assert cfg.method_params["start"] == "sequential"


# ---- PAM (reconstruction) ------------------------------------------------------------------------------------------


def test_alignment_penalty_hand_worked():
    ref = {"w": torch.tensor([4.0, -2.0, 0.1, 0.0], dtype=torch.float64)}
    mask = M.alignment_mask(ref, 0.5)  # top 2 of |ref|: entries 0, 1
    assert mask["w"].tolist() == [True, True, False, False]
    tv = {"w": torch.tensor([-1.0, -3.0, -5.0, 7.0], dtype=torch.float64)}
    # sign: only entry 0 opposes (relu(−1·−1) = 1); entry 2 opposes too but is not watched. Σ_M ref² = 20
    assert float(M.alignment_penalty(tv, ref, mask, "sign")) == pytest.approx(1 / 20, rel=1e-15)
    # deviation: (−1 − 4)² + (−3 + 2)² = 26
    assert float(M.alignment_penalty(tv, ref, mask, "deviation")) == pytest.approx(26 / 20, rel=1e-15)
    # zero when aligned: same signs (any magnitudes) on the watched entries, whatever happens elsewhere
    aligned = {"w": torch.tensor([0.5, -9.0, -5.0, 7.0], dtype=torch.float64)}
    assert float(M.alignment_penalty(aligned, ref, mask, "sign")) == 0.0
    assert float(M.alignment_penalty(ref, ref, mask, "deviation")) == 0.0
    assert float(M.alignment_penalty({"w": -ref["w"]}, ref, mask, "sign")) == pytest.approx(1.0)  # fully flipped
    # ties at the threshold are all watched, zeros never
    assert M.alignment_mask({"w": torch.tensor([1.0, -1.0, 0.5, 0.0])}, 0.25)["w"].tolist() == [True, True, False, False]
    assert M.alignment_mask({"w": torch.zeros(3)}, 1.0)["w"].tolist() == [False] * 3
    assert float(M.alignment_penalty({"w": torch.ones(3)}, {"w": torch.zeros(3)}, {"w": torch.zeros(3, dtype=torch.bool)})) == 0.0
    with pytest.raises(ValueError):
        M.alignment_penalty(tv, ref, mask, "cosine")


@pytest.mark.parametrize("kind", ["sign", "deviation"])
def test_alignment_gradient_pushes_toward_the_merged_delta(kind):
    gen = g(3)
    ref = {n: torch.randn(sh, generator=gen, dtype=torch.float64) for n, sh in SHAPES.items()}
    mask = M.alignment_mask(ref, 0.3)
    tv = {n: torch.randn(sh, generator=gen, dtype=torch.float64).requires_grad_() for n, sh in SHAPES.items()}
    p0 = M.alignment_penalty(tv, ref, mask, kind)
    assert float(p0.detach()) > 0
    p0.backward()
    for n in SHAPES:
        grad = tv[n].grad
        assert torch.all(grad[~mask[n]] == 0)  # unwatched entries are free
        step = -grad
        if kind == "sign":  # descent raises sgn(ref)·τ on the opposing watched entries, leaves the aligned ones
            opposing = mask[n] & (torch.sign(ref[n]) * tv[n] < 0)
            assert torch.all(torch.sign(ref[n][opposing]) * step[opposing] > 0)
            assert torch.all(step[mask[n] & ~opposing] == 0)
        else:  # descent moves τ toward ref
            d = (ref[n] - tv[n]).detach()
            assert torch.all((d * step)[mask[n]] > 0)
    with torch.no_grad():
        stepped = {n: tv[n] - 0.1 * tv[n].grad for n in SHAPES}
    assert float(M.alignment_penalty(stepped, ref, mask, kind)) < float(p0.detach())


def test_alignment_through_the_lora_factors():
    """The differentiable ΔW equals CLModel.delta, and descent on μ·P in the LoRA factors raises the sign agreement."""
    model = CLModel(BackboneConfig(preset="vit-micro-test"))
    params = model.add_adapter("task1", seed=1)
    with torch.no_grad():
        for m in model.lora_layers().values():
            m.lora_B["task1"].weight.normal_(generator=g(0))
    d = lora_delta(model, "task1")
    ref = {n: v.detach() for n, v in model.delta("task1").items()}
    assert all(torch.equal(d[n], ref[n]) for n in ref)
    target = {n: -v for n, v in ref.items()}  # the merged delta points the other way everywhere
    mask = M.alignment_mask(target, 0.2)

    def agreement() -> float:
        dd = model.delta("task1")
        return sum(int(((torch.sign(dd[n]) == torch.sign(target[n])) & mask[n]).sum()) for n in mask) / sum(
            int(m.sum()) for m in mask.values()
        )

    assert agreement() == 0.0
    opt = torch.optim.SGD(params, lr=0.05)
    first = None
    for _ in range(40):
        p = M.alignment_penalty(lora_delta(model, "task1"), target, mask)
        first = float(p.detach()) if first is None else first
        opt.zero_grad()
        p.backward()
        opt.step()
    assert first == pytest.approx(1.0)  # fully flipped at the start
    assert float(M.alignment_penalty(lora_delta(model, "task1"), target, mask).detach()) < 0.5 * first
    assert agreement() > 0.05  # watched entries start to take the merged sign (magnitudes shrink first)


def test_running_merge_hand_worked():
    xs = [{"w": torch.tensor([3.0, -6.0])}, {"w": torch.tensor([0.0, 3.0])}, {"w": torch.tensor([6.0, 0.0])}]
    acc = None
    for t, x in enumerate(xs, start=1):
        acc = M.running_merge(acc, x, t)
    assert acc["w"].tolist() == [3.0, -1.0]  # the mean of the three
    acc = None
    for t, x in enumerate(xs, start=1):
        acc = M.running_merge(acc, x, t, weight=0.25)
    # θ̂_1 = [3, −6]; θ̂_2 = .75·[3, −6] + .25·[0, 3] = [2.25, −3.75]; θ̂_3 = .75·θ̂_2 + .25·[6, 0] = [3.1875, −2.8125]
    assert acc["w"].tolist() == [3.1875, -2.8125]
    with pytest.raises(ValueError):
        M.running_merge(None, xs[0], 0)


def test_pam_params_are_validated():
    from methods.pam import Params

    Params().validate("m")
    for bad in (dict(mu=-1.0), dict(top_fraction=0.0), dict(top_fraction=1.5), dict(merge_weight=0.0)):
        with pytest.raises(ConfigError):
            Params(**bad).validate("m")


def test_pam_run_penalises_and_merges_by_running_mean():
    cfg = resolve("split-digits-2x5", "pam", overrides=FAST)
    s = build(cfg, QUIET)
    state = run_tasks(s, QUIET, stop_after=1)
    m = s.method
    d1 = {n: v.clone() for n, v in m.dhat.items()}
    assert all(torch.equal(w, m.w0[n] + d1[n]) for n, w in s.model.merged_weights().items())
    state = run_tasks(s, QUIET, state=state)
    r = state.method_records
    assert r[0] == {"merge_weight": 1.0}  # no penalty for task 1: nothing merged yet
    assert r[1]["merge_weight"] == 0.5 and r[1]["penalty_at_end"] >= 0.0 and 0.0 <= r[1]["sign_agreement"] <= 1.0
    # τ_2 = D̂_1 + ΔW_2 (start "merged"), D̂_2 = (D̂_1 + τ_2)/2 = D̂_1 + ΔW_2/2, written into the weights
    for n, w in s.model.merged_weights().items():
        assert torch.allclose(w, m.w0[n] + m.dhat[n], rtol=0, atol=0)
    # the penalty enters the loss: with a LoRA that flips the merged delta the loss is larger than the CE alone
    task = s.stream.tasks[1]
    m.begin_task(s.model, task)
    with torch.no_grad():
        for n, layer in s.model.lora_layers().items():
            layer.lora_B[m.adapter_name(task)].weight.normal_(generator=g(0))
    x, y = next(s.train_bank.iterate(task.train_indices, 16))
    ce = Method.training_loss(m, s.model, x, y, task)
    total = m.training_loss(s.model, x, y, task)
    pen = float(m.penalty(s.model, task).detach())
    assert float((total - ce).detach()) == pytest.approx(m.params.mu * pen, rel=1e-6)
    assert pen > 0


def test_classes_preference_weights_tasks_by_their_class_counts():
    """preference "classes" (the default): task weights = the numbers of classes of the seen tasks, so a task of 2
    classes weighs 2/(2+3+5) after three tasks of 2, 3 and 5 classes — not 1/3 as with uniform weights."""
    import numpy as np

    from harness.config import RunConfig, TrainConfig
    from harness.data.stream import Task
    from harness.method.base import MethodContext
    from harness.method.registry import get_method

    sizes = (2, 3, 5)
    offsets = np.cumsum((0,) + sizes)
    tasks = [Task(i, tuple(range(offsets[i], offsets[i + 1])), int(offsets[i]), np.arange(4), np.arange(0))
             for i in range(3)]
    cfg = RunConfig(benchmark="split-digits", method="tunable-magmax", backbone=BackboneConfig(preset="vit-micro-test"),
                    train=TrainConfig(), method_params={})
    cls = get_method("tunable-magmax")
    method = cls(cls.Params(), MethodContext(cfg, SimpleNamespace(tasks=tasks), torch.device("cpu")))
    assert method.params.preference == "classes"
    assert method.preference_weights(2) == ([2.0, 3.0, 5.0], "classes")
    assert method.preference_weights(1) == ([2.0, 3.0], "classes")
    uniform = cls(cls.Params(preference="uniform"), MethodContext(cfg, SimpleNamespace(tasks=tasks), torch.device("cpu")))
    assert uniform.preference_weights(2) == ([1.0, 1.0, 1.0], "uniform")
