"""Model Breadcrumbs: task arithmetic of task vectors with both tails of each row's magnitudes masked out.

Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks", ECCV 2024,
arXiv 2312.06795. Per task vector τ_i = θ*_i − W0 the entries of largest magnitude (outliers) and the small ones
(negligible perturbations) are zeroed; the merge is task arithmetic of the masked vectors:
θ̂_t = W0 + λ·Σ_{i≤t} m_i⊙τ_i. The masking rule follows the authors' public code (rezazzr/breadcrumbs,
`src/task_vectors.py`, `TaskVectorMiddleKeep` with its default `remove_first=True`; read, not copied): per row of each
matrix (along its last dimension, n entries), first the int(remove·n) largest |τ| are zeroed, then of what is left
only the int(keep·n) largest |τ| are kept. The paper's β/γ percentiles are this code's keep/remove fractions.

Defaults [I]: the authors' script has no defaults (β = γ = 0 there) and its scaling λ defaults to 0.4; here
λ = 0.4, keep = 0.2 (the density of this project's `ties`) and remove = 0.05 (with this backbone's rows of 64
entries int(0.05·64) = 3 outliers per row go; mergekit's γ = 0.01 would remove none). Continual use [I]: the paper
merges independently fine-tuned models, so each task's LoRA trains from W0 (start "pretrained", as `task-arith`);
the masked vectors are summed online, so memory is constant. All are hyper-parameters, untuned for LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.errors import ConfigError
from harness.method import register
from methods._task_vectors import Start
from methods.task_arith import TaskArithmetic


def breadcrumbs_mask(tau: torch.Tensor, keep: float, remove: float) -> torch.Tensor:
    """Breadcrumbs' masked task vector m⊙τ, row by row along the last dimension (n entries per row).

    Per row: zero the r = int(remove·n) entries of largest |τ|, then keep only the k = int(keep·n) largest |τ| of the
    rest (the authors' `TaskVectorMiddleKeep`, remove first). Equal magnitudes are ranked by `torch.topk`, so a tie at
    a cut is broken by index as in the authors' code. A 0-d tensor is returned unchanged (as there).
    """
    if tau.dim() == 0:
        return tau
    n = tau.shape[-1]
    removed = _zero_top(tau, int(remove * n))
    kept_idx = torch.topk(removed.abs(), int(keep * n), dim=-1).indices
    mask = torch.zeros_like(tau).scatter_(-1, kept_idx, 1.0)
    return removed * mask


def _zero_top(tau: torch.Tensor, count: int) -> torch.Tensor:
    """τ with the `count` largest-|τ| entries of each row set to 0."""
    idx = torch.topk(tau.abs(), count, dim=-1).indices
    return tau * torch.ones_like(tau).scatter_(-1, idx, 0.0)


@dataclass
class Params:
    keep: float = 0.2  # fraction of each row kept (the code's β) [I]
    remove: float = 0.05  # fraction of each row's largest entries removed first (the code's γ) [I]
    lam: float = 0.4  # task-arithmetic scaling λ (the authors' script default)
    start: Start = "pretrained"  # independent fine-tuning from W0, as the paper merges [I]

    def validate(self, where: str) -> None:
        for key in ("keep", "remove"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{where}.{key}: must be in [0, 1], got {value}")
        if self.keep + self.remove > 1.0:
            raise ConfigError(
                f"{where}: keep + remove must be <= 1 (the kept entries come from what is left after the removal), "
                f"got {self.keep} + {self.remove}"
            )


@register
class Breadcrumbs(TaskArithmetic):
    """Task arithmetic (its running sum, λ-scaled merge and saved state) over masked task vectors."""

    name = "breadcrumbs"
    description = "Model Breadcrumbs: per row drop the largest and the smallest |τ|, then task arithmetic λ·Σ masked τ"
    Params = Params
    reconstruction = "continual use (independent LoRA per task from W0, online sum) and the keep/remove defaults are ours"

    def absorb(self, tau, task) -> None:
        masked = {n: breadcrumbs_mask(t, self.params.keep, self.params.remove) for n, t in tau.items()}
        super().absorb(masked, task)
        kept = sum(int((m != 0).sum()) for m in masked.values()) / max(1, sum(t.numel() for t in tau.values()))
        self.record = {"kept_fraction": kept}
