"""clmerge's TIES, DARE and task arithmetic against peft's merge utilities (peft.utils.merge_utils, run as installed)
on identical inputs. Documented differences are pinned rather than hidden: peft keeps k = int(density·n) entries
(clmerge: int(density·n) + 1 by default, so the comparison uses `count: round` on a density·n that is an integer),
trims each tensor separately (clmerge: the whole task vector — compared here on one matrix), and draws DARE masks
with torch.bernoulli (clmerge: torch.rand on a seeded generator — peft is given clmerge's mask)."""

from __future__ import annotations

import pytest
import torch

from harness.math import merging as M

merge_utils = pytest.importorskip("peft.utils.merge_utils")


def task_tensors(seed: int, k: int = 3, shape=(5, 4)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(k)]


@pytest.mark.parametrize("seed", range(3))
def test_task_arithmetic_matches_peft(seed):
    ts = task_tensors(seed)
    ours = M.task_arithmetic([{"w": t} for t in ts], 0.4)["w"]
    theirs = merge_utils.task_arithmetic(ts, torch.full((3,), 0.4, dtype=torch.float64))
    torch.testing.assert_close(ours, theirs, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("density", [0.25, 0.5])
def test_ties_matches_peft_on_one_matrix(seed, density):
    """20 entries, density·n ∈ {5, 10}: clmerge's `round` count equals peft's int(density·n); sign by total mass;
    disjoint mean; λ given to peft as every task's weight (its disjoint mean of the weighted tensors is λ × ours)."""
    ts = task_tensors(seed)
    ours = M.ties_merge([{"w": t} for t in ts], density, 0.55, count="round")["w"]
    theirs = merge_utils.ties(ts, torch.full((3,), 0.55, dtype=torch.float64), density)
    torch.testing.assert_close(ours, theirs, rtol=1e-15, atol=1e-15)
    # the default (the TIES/MagMax code's count) keeps one entry more per task than peft
    kept = [int((M.ties_trim({"w": t}, density)["w"] != 0).sum()) for t in ts]
    assert kept == [int(density * 20) + 1] * 3


@pytest.mark.parametrize("seed", range(3))
def test_dare_linear_matches_peft_given_the_same_mask(seed, monkeypatch):
    """DARE p = 0.3 (peft density 0.7) then task arithmetic with weights 0.5: peft's random_pruning draws its mask with
    torch.bernoulli, which is handed clmerge's seeded masks in order."""
    ts = task_tensors(seed)
    p = 0.3
    ours_dropped = [M.dare({"w": t}, p, torch.Generator().manual_seed(10 + i))["w"] for i, t in enumerate(ts)]
    ours = M.task_arithmetic([{"w": d} for d in ours_dropped], 0.5)["w"]
    masks = iter([(d != 0).to(torch.float64) for d in ours_dropped])
    monkeypatch.setattr(torch, "bernoulli", lambda x, *a, **k: next(masks))
    theirs = merge_utils.dare_linear(ts, torch.full((3,), 0.5, dtype=torch.float64), 1 - p)
    torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_dare_ties_sign_election_and_disjoint_mean_match_peft(seed, monkeypatch):
    """peft's dare_ties = DARE, then sign by total mass and disjoint mean (no magnitude trim): clmerge's online TIES
    sums with density 1 (nothing trimmed), merge "mean" and the majority zero sign give the same."""
    ts = task_tensors(seed)
    p = 0.5
    dropped = [M.dare({"w": t}, p, torch.Generator().manual_seed(20 + i))["w"] for i, t in enumerate(ts)]
    acc = None
    for d in dropped:
        acc = M.ties_accumulate(acc, M.ties_trim({"w": d}, 1.0))
    ours = M.ties_resolve(acc, 1.0, merge="mean", zero_sign="majority")["w"]
    masks = iter([(d != 0).to(torch.float64) for d in dropped])
    monkeypatch.setattr(torch, "bernoulli", lambda x, *a, **k: next(masks))
    theirs = merge_utils.dare_ties(ts, torch.ones(3, dtype=torch.float64), 1 - p)
    torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-15)
