"""Input-subspace math shared by InfLoRA and BECAME's gradient-projection stage: uncentred input covariances of the
LoRA-adapted projections, the (Dual)GPM basis of the old tasks' input space, projectors, and InfLoRA's design of
the LoRA down-projection A.

Sources
* GPM — Saha, Garg, Roy, "Gradient Projection Memory for Continual Learning", ICLR 2021 (arXiv 2103.09762), §4:
  representation R of a layer's inputs, basis update by the energy criterion: add the top left singular vectors
  of the residual R̂ = R − MMᵀR until ‖MMᵀR‖² + Σ_{i≤r} σ̂_i² ≥ ε‖R‖² (minimal r).
* DualGPM — Liang & Li, "Adaptive Plasticity Improvement for Continual Learning", CVPR 2023, as used by InfLoRA
  (Liang & Li, CVPR 2024, arXiv 2404.00228, §3.3 and its code `methods/inflora.py::update_DualGPM`): a layer stores
  either the old-input basis M ('remove': the projector onto the free space is I − MMᵀ) or, once that basis exceeds
  d/2 columns, an orthonormal basis of its complement ('retain': the free projector is MMᵀ); a 'retain' update
  removes from the complement the top directions of its part of R until the same energy criterion holds.
* InfLoRA's A (§3.2 and code): A = top-r left singular vectors of the free-space-projected covariance, as rows,
  divided by √3. The "representation" given to DualGPM in the InfLoRA code is the covariance C itself (so the
  energies are σ_i(C)², i.e. squared eigenvalues) — kept here for fidelity.

Differences from the reference code (deliberate, see the docstrings): the first task uses the same minimal-r rule
as later tasks (the code takes one direction fewer, `np.sum(cumsum < ε)`), and a first-task basis wider than d/2 is
stored as its complement tagged 'retain' (the code stores U[:, :r] itself with the 'retain' tag, which would make
the free projector the *old* space). All tensors are float64.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Literal

import torch

from harness.core.precision import full_precision

if TYPE_CHECKING:
    from harness.model.backbone import CLModel

Kind = Literal["remove", "retain"]


# ---- covariance ----------------------------------------------------------------------------------------------------
class CovarianceAccumulator:
    """Uncentred second moment over tokens: C = (1/N) Σ_n x_n x_nᵀ, x_n ∈ R^d every token of every sample
    (InfLoRA §3.2: "the input of the k/v projections"; code: `cur_matrix`, a running mean over B·N tokens)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.sum = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Add every row of `x` (shape [..., d])."""
        flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        self.sum += flat.T @ flat
        self.count += flat.shape[0]

    def mean(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("CovarianceAccumulator: no samples")
        return self.sum / self.count


def lora_groups(model: "CLModel") -> dict[str, list[str]]:
    """Adapted layers grouped by the module whose input they share: 'blocks.i.attn.qkv' → ['….k', '….v'].
    k and v read the same tokens, so one covariance and one basis per block serve both."""
    groups: dict[str, list[str]] = {}
    for n in model.lora_layers():
        groups.setdefault(n.rsplit(".", 1)[0], []).append(n)
    return groups


@torch.no_grad()
def input_covariances(model: "CLModel", batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """C per group (see `lora_groups`) over one pass of `batches` through the current model (all active adapters),
    from forward pre-hooks on the shared-input modules; eval mode, fp32 forward, float64 sums."""
    root = model.vit.base_model.model
    acc: dict[str, CovarianceAccumulator] = {}
    handles = []
    for g in lora_groups(model):
        module = root.get_submodule(g)

        def hook(mod, args, g=g):
            x = args[0]
            if g not in acc:
                acc[g] = CovarianceAccumulator(x.shape[-1], x.device)
            acc[g].add(x)

        handles.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for x, _ in batches:
            with full_precision(x.device):
                model.features(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {g: a.mean() for g, a in acc.items()}


# ---- GPM / DualGPM ---------------------------------------------------------------------------------------------------
def validate_thresholds(lamb: float, lame: float, energy: str, where: str) -> None:
    """Check the DualGPM hyper-parameters shared by InfLoRA and BECAME (`threshold`, `gpm_representation`)."""
    from harness.core.errors import ConfigError

    if not 0.0 < lamb <= 1.0:
        raise ConfigError(f"{where}.lamb: must be in (0, 1], got {lamb}")
    if not lamb <= lame <= 1.0:
        raise ConfigError(f"{where}.lame: must be in [lamb, 1] = [{lamb}, 1], got {lame}")
    if energy not in ("cov", "input"):
        raise ConfigError(f"{where}.energy: must be 'cov' or 'input', got {energy!r}")


def threshold(t: int, num_tasks: int, lamb: float, lame: float) -> float:
    """InfLoRA's energy threshold after task t (0-based) of T: ε_t = lamb + (lame − lamb)·t/T (code: update_DualGPM).
    With lamb = 0.97, lame = 1, T = 10 this is GPM's CIFAR schedule 0.97 + 0.003·t."""
    return lamb + (lame - lamb) * t / num_tasks


def gpm_representation(cov: torch.Tensor, energy: Literal["cov", "input"]) -> torch.Tensor:
    """The matrix whose squared singular values are the energies of the GPM criterion.

    "cov": C itself, as the InfLoRA code passes it — energies σ_i(C)² = λ_i², which weights the top eigen-directions
    quadratically (few directions reach ε). "input": C^{1/2}, whose energies are λ_i = the share of E‖x‖² — GPM's
    criterion on the activation matrix R (C = RRᵀ/N has the same left singular vectors, σ_i(R)² ∝ λ_i)."""
    if energy == "cov":
        return cov
    evals, evecs = torch.linalg.eigh(cov)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def energy_rank(captured: float, ratios: torch.Tensor, eps: float) -> int:
    """Minimal r with captured + Σ_{i<r} ratios_i ≥ eps (GPM Eq. 9); at most len(ratios) (ratios = σ̂_i²/‖R‖²,
    descending). r = 0 when `captured` already reaches eps."""
    if captured >= eps:
        return 0
    cum = captured + torch.cumsum(ratios, 0)
    hit = torch.nonzero(cum >= eps - 1e-12)
    return int(hit[0]) + 1 if len(hit) else len(ratios)


def _significant(s: torch.Tensor, total: float) -> int:
    """Number of singular values whose energy is above round-off: directions beyond are not in the data."""
    return int((s.square() > 1e-12 * total).sum())


def empty_basis(dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(dim, 0, dtype=torch.float64, device=device)


def old_projector(basis: torch.Tensor, kind: Kind) -> torch.Tensor:
    """Projector onto the old tasks' input space: MMᵀ ('remove') or I − MMᵀ ('retain')."""
    p = basis @ basis.T
    return p if kind == "remove" else torch.eye(basis.shape[0], dtype=p.dtype, device=p.device) - p


def free_projector(basis: torch.Tensor, kind: Kind) -> torch.Tensor:
    """Projector onto the complement of the old input space, where new updates do not disturb old inputs:
    I − MMᵀ ('remove') or MMᵀ ('retain')."""
    p = basis @ basis.T
    return torch.eye(basis.shape[0], dtype=p.dtype, device=p.device) - p if kind == "remove" else p


def complement(basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the orthogonal complement of span(basis) (orthonormal columns)."""
    d, k = basis.shape
    if k == 0:
        return torch.eye(d, dtype=basis.dtype, device=basis.device)
    u = torch.linalg.svd(basis, full_matrices=True).U
    return u[:, k:]


def gpm_update(basis: torch.Tensor, kind: Kind, rep: torch.Tensor, eps: float) -> tuple[torch.Tensor, Kind]:
    """One DualGPM update with representation `rep` (d × n; InfLoRA passes the d × d covariance) and threshold ε.

    'remove' (basis = old space M): R̂ = (I − MMᵀ)R, captured = 1 − ‖R̂‖²/‖R‖², add the minimal r top left
    singular vectors of R̂ with captured + Σ_{i≤r} σ̂_i²/‖R‖² ≥ ε.
    'retain' (basis = free space M): R̂ = MMᵀR is the part of R not yet captured; the same r directions (top left
    singular vectors U_r of R̂, inside span M) leave the free space: M ← orthonormal basis of span(M) ⊖ span(U_r).
    Both give the same old space for the same input (tested). Afterwards a 'remove' basis wider than d/2 is stored as
    its complement with kind 'retain' (DualGPM's memory rule; the projectors do not change).
    """
    d = basis.shape[0]
    rep = rep.to(basis)
    total = float(rep.square().sum())
    if total > 0:
        resid = free_projector(basis, kind) @ rep
        u, s, _ = torch.linalg.svd(resid, full_matrices=False)
        captured = 1.0 - float(s.square().sum()) / total
        r = energy_rank(captured, s.square() / total, eps)
        r = min(r, _significant(s, total))
        if r > 0 and kind == "remove":
            basis = torch.cat([basis, u[:, :r]], dim=1)[:, :d]
        elif r > 0:
            k = basis.shape[1]
            rest = basis - u[:, :r] @ (u[:, :r].T @ basis)  # M with the new old directions removed
            basis = torch.linalg.svd(rest, full_matrices=False).U[:, : max(k - r, 0)]
    if kind == "remove" and basis.shape[1] > d / 2:
        basis, kind = complement(basis), "retain"
    return basis, kind


def inflora_down(cov: torch.Tensor, basis: torch.Tensor, kind: Kind, rank: int) -> torch.Tensor:
    """InfLoRA's designed down-projection (rank × d): rows = top-`rank` left singular vectors of C' = P_free·C,
    divided by √3 [code]. Rows are projected onto the free space once more, which changes nothing when C' has
    `rank` non-zero singular values and otherwise keeps A ⟂ old inputs (the SVD's arbitrary null vectors)."""
    p = free_projector(basis, kind)
    u = torch.linalg.svd(p @ cov.to(p), full_matrices=False).U[:, :rank]
    return (p @ u).T / math.sqrt(3.0)


class DualGPM:
    """The old tasks' input bases of every group (shared-input module), each with its DualGPM kind."""

    def __init__(self) -> None:
        self.bases: dict[str, torch.Tensor] = {}
        self.kinds: dict[str, Kind] = {}

    def __bool__(self) -> bool:
        return bool(self.bases)

    def free_projector(self, group: str, dim: int, device: torch.device | str) -> torch.Tensor:
        """P_free of `group`; the identity before the first update."""
        if group not in self.bases:
            return torch.eye(dim, dtype=torch.float64, device=device)
        return free_projector(self.bases[group], self.kinds[group])

    def update(self, covs: dict[str, torch.Tensor], eps: float, energy: Literal["cov", "input"]) -> dict[str, int]:
        """`gpm_update` every group with its covariance (energies per `gpm_representation`); returns the dimension
        of each old input space."""
        for g, c in covs.items():
            basis = self.bases.get(g, empty_basis(c.shape[0], c.device))
            rep = gpm_representation(c, energy)
            self.bases[g], self.kinds[g] = gpm_update(basis, self.kinds.get(g, "remove"), rep, eps)
        return {g: self.old_dim(g) for g in self.bases}

    def old_dim(self, group: str) -> int:
        b = self.bases[group]
        return b.shape[1] if self.kinds[group] == "remove" else b.shape[0] - b.shape[1]

    def state_dict(self) -> dict:
        return {"bases": dict(self.bases), "kinds": dict(self.kinds)}

    def load_state_dict(self, state: dict) -> None:
        self.bases, self.kinds = dict(state["bases"]), dict(state["kinds"])
