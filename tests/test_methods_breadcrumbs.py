"""Model Breadcrumbs (methods/breadcrumbs.py): the masking rule and the merge on cases computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness.core.errors import ConfigError
from methods.breadcrumbs import Breadcrumbs, Params, breadcrumbs_mask


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_breadcrumbs_mask_hand_worked():
    """Rows of n = 5, remove = 0.2 → int(1.0) = 1 largest |τ| zeroed, keep = 0.4 → int(2.0) = 2 largest of the rest:
    (5, −1, 3, 0.5, −4): 5 removed; of (0, −1, 3, 0.5, −4) keep −4 and 3 → (0, 0, 3, 0, −4).
    (0.125, 0.25, −0.375, 0.5, −0.625): −0.625 removed; keep 0.5 and −0.375 → (0, 0, −0.375, 0.5, 0).
    The rows are masked independently: row 1's small entries survive although row 0's are larger."""
    out = breadcrumbs_mask(t([5.0, -1.0, 3.0, 0.5, -4.0], [0.125, 0.25, -0.375, 0.5, -0.625]), keep=0.4, remove=0.2)
    assert out.tolist() == [[0.0, 0.0, 3.0, 0.0, -4.0], [0.0, 0.0, -0.375, 0.5, 0.0]]


def test_breadcrumbs_mask_edges():
    """remove = 0 is magnitude pruning (top-k kept); keep = 1, remove = 0 is the identity; keep = 0 gives zeros."""
    row = t([5.0, -1.0, 3.0, 0.5, -4.0])
    assert breadcrumbs_mask(row, keep=0.4, remove=0.0).tolist() == [[5.0, 0.0, 0.0, 0.0, -4.0]]
    assert breadcrumbs_mask(row, keep=1.0, remove=0.0).tolist() == row.tolist()
    assert breadcrumbs_mask(row, keep=0.0, remove=0.2).tolist() == [[0.0] * 5]


def test_breadcrumbs_counts_truncate_as_the_authors_code():
    """Counts are int(fraction·n), truncated: n = 5, remove 0.3 → int(1.5) = 1 (5 removed), keep 0.5 → int(2.5) = 2
    (−4 and 3 kept). Rounding would remove 2 (5 and −4) and keep (3, −1)."""
    row = t([5.0, -1.0, 3.0, 0.5, -4.0])
    assert breadcrumbs_mask(row, keep=0.5, remove=0.3).tolist() == [[0.0, 0.0, 3.0, 0.0, -4.0]]


def test_breadcrumbs_merge_hand_worked():
    """Two tasks, keep 0.4, remove 0.2, λ = 0.5; m⊙τ_1 as in the mask test;
    τ_2 = ((2, 6, −1, 1.5, 0.25), (−1, 0.375, 0.25, 0.75, 0.0625)): 6 and −1 removed; kept (2, 1.5) and (0.75, 0.375)
    → m⊙τ_2 = ((2, 0, 0, 1.5, 0), (0, 0.375, 0, 0.75, 0)).
    θ̂_2 − W0 = 0.5·(m⊙τ_1 + m⊙τ_2) = 0.5·((2, 0, 3, 1.5, −4), (0, 0.375, −0.375, 1.25, 0))
             = ((1, 0, 1.5, 0.75, −2), (0, 0.1875, −0.1875, 0.625, 0))."""
    ctx = SimpleNamespace(config=SimpleNamespace(train=None, seed=0))
    method = Breadcrumbs(Params(keep=0.4, remove=0.2, lam=0.5), ctx)
    method.absorb({"w": t([5.0, -1.0, 3.0, 0.5, -4.0], [0.125, 0.25, -0.375, 0.5, -0.625])}, task=None)
    assert method.merged()["w"].tolist() == [[0.0, 0.0, 1.5, 0.0, -2.0], [0.0, 0.0, -0.1875, 0.25, 0.0]]
    assert method.record == {"kept_fraction": 0.4}
    method.absorb({"w": t([2.0, 6.0, -1.0, 1.5, 0.25], [-1.0, 0.375, 0.25, 0.75, 0.0625])}, task=None)
    assert method.merged()["w"].tolist() == [[1.0, 0.0, 1.5, 0.75, -2.0], [0.0, 0.1875, -0.1875, 0.625, 0.0]]


@pytest.mark.parametrize("bad, message", [({"keep": 1.5}, "m.keep: must be in [0, 1]"),
                                          ({"remove": -0.1}, "m.remove: must be in [0, 1]"),
                                          ({"keep": 0.7, "remove": 0.4}, "keep + remove must be <= 1")])
def test_breadcrumbs_params_refused_with_the_key(bad, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        Params(**bad).validate("m")
