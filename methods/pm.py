"""P&M — Perturb-and-Merge: "Train with Perturbation, Infer after Merging" (Qiu, Zhang, Qiao, Nie; NeurIPS 2025,
arXiv 2505.22389), LoRA variant, and its ablation rows `lora-m` and `pm-gauss`. Specification and provenance:
research/pm-spec.md (the official code could not be retrieved: the details tagged [I] there are reconstructions).

Per task t (a new LoRA on k/v, trained from the current merged weights θ̂_{t−1}, plus a new head):

* Train with perturbation (§3): at every training step draw s ∈ {0, +1, −1} with probability 1/3 each (a generator
  seeded by the run config and the task) and scale the *product* of the current task's LoRA (its output, not its
  factors) by (1 + s·ε), ε = 0.5 [paper]. One forward and one backward per step. The merged weights and the heads
  are never perturbed. E[loss] = L(θ) + (ε²/3)·ΔᵀHΔ + O(ε⁴): a curvature penalty along the task vector.
* Infer after merging (§2): the diagonal empirical Fisher F_t of the task's CE (current head, local labels,
  logits/temperature) at the trained point, over the effective k/v matrices (harness/math/fisher.py) — by default the
  mean of per-sample squared gradients (the standard empirical Fisher; `fisher: batch` squares mini-batch-mean
  gradients instead, an option whose α depends on the batch size); then
      α_t = −Σ_{i≤t} (θ̂_{t−1} − θ*_i)ᵀ F_i Δ_t / Σ_{i≤t} Δ_tᵀ F_i Δ_t,  clipped to [0, 1] (α_1 = 1),
  one global α by default [paper], per adapted matrix with `per_module`; fold α_t·Δ_t into the weights and drop
  the LoRA. Running sums S0 = Σ F_i, S1 = Σ F_i ⊙ (θ*_i − W0) and D̂ = θ̂ − W0 (float64) replace the paper's
  stored per-task Fisher and LoRA factors (§2.3; equal to the batch formula, tests/test_merging_math.py), so the
  state has a fixed size. α_t of every task goes to the run's results.

Ablations [paper, Table "ablation"]: `lora-m` = the same merge without perturbation; `pm-gauss` = the perturbation
along a random Gaussian direction instead of the task vector. How the paper drew that noise is unknown [?]; here
[I] the direction is i.i.d. Gaussian per adapted matrix m, rescaled to ‖Δ_m‖_F and redrawn every step, with the
same s and ε. The forward perturbation has P&M's size, but the gradient does not: the noise (and its scale ‖Δ_m‖) is
a constant of the step, so the LoRA's gradient is that of the unperturbed product at the shifted point (ratio 1 to
the product's own term), where P&M's scaled product multiplies it by (1 + sε). The two differ in direction *and* in
this gradient factor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.core.seeding import generator
from harness.math.merging import Alpha, pm_alpha_stream, pm_stream_update
from harness.method import Method, register

Perturbation = Literal["task-vector", "gaussian", "none"]
SIGNS = (0, 1, -1)  # s drawn uniformly from these (p0 = p+ = p− = 1/3, research/pm-spec.md §3.2)


@dataclass
class PMParams:
    epsilon: float = 0.5  # perturbation size ε [paper]
    perturbation: Perturbation = "task-vector"  # direction: the task's LoRA product, a Gaussian one, or none
    per_module: bool = False  # one α per adapted matrix instead of one global α (the paper's ablation)
    fisher: Literal["per-sample", "batch"] = "per-sample"  # Fisher estimator (harness/math/fisher.py); batch: option only

    def validate(self, where: str) -> None:
        if self.epsilon < 0:
            raise ConfigError(f"{where}.epsilon: must be >= 0, got {self.epsilon}")


@register
class PerturbAndMerge(Method):
    name = "pm"
    draws_random = True  # the perturbation signs (and pm-gauss noise)
    description = "P&M: LoRA trained with task-vector perturbation, merged with the closed-form Fisher coefficient α_t"
    Params = PMParams
    constant_memory = True
    reconstruction = "Fisher estimator and space (effective k/v weights), streaming sums, clipping: no official code"
    state_changes_in_task = False  # S0, S1, D̂ change only in end_task

    def __init__(self, params: PMParams, ctx):
        super().__init__(params, ctx)
        self.s0: dict[str, torch.Tensor] | None = None  # Σ F_i
        self.s1: dict[str, torch.Tensor] | None = None  # Σ F_i ⊙ (θ*_i − W0)
        self.dhat: dict[str, torch.Tensor] | None = None  # θ̂ − W0
        self._rng: torch.Generator | None = None
        self._noise_rng: torch.Generator | None = None
        self._counts = [0, 0, 0]

    # ---- training with perturbation -------------------------------------------------------------------------
    def begin_task(self, model, task) -> None:
        super().begin_task(model, task)
        self._rng = generator(self.seed, "pm-perturbation", task.index)
        # pm-gauss noise: on CPU from the sign generator (one stream, as always); on a GPU from a generator on the
        # device, so that no noise matrix is copied host→device every step
        device = self.ctx.device
        self._noise_rng = (
            self._rng if device.type == "cpu" else generator(self.seed, "pm-gauss-noise", task.index, device=device)
        )
        self._counts = [0, 0, 0]

    def draw_sign(self) -> int:
        assert self._rng is not None
        k = torch.randint(len(SIGNS), (1,), generator=self._rng).tolist()[0]  # a host draw: no scalar read
        self._counts[k] += 1
        return SIGNS[k]

    @contextlib.contextmanager
    def perturbed(self, model, task, s: int) -> Iterator[None]:
        """Inside: the current task's LoRA product scaled by (1 + s·ε) (or a Gaussian direction of its norm)."""
        name, eps = self.adapter_name(task), self.params.epsilon
        if s == 0 or self.params.perturbation == "none" or eps == 0:
            yield
        elif self.params.perturbation == "task-vector":
            with model.adapter_output_scale(name, 1.0 + s * eps):
                yield
        else:
            with self._gaussian(model, name, s * eps):
                yield

    @contextlib.contextmanager
    def _gaussian(self, model, name: str, coef: float) -> Iterator[None]:
        """y ← y + coef·x·Nᵀ per adapted layer, N Gaussian with ‖N‖_F = ‖Δ‖_F (no gradient through N)."""
        assert self._rng is not None
        handles = []
        delta, layers = model.delta(name), model.lora_layers()
        for n in sorted(delta):
            noise = torch.randn(delta[n].shape, generator=self._noise_rng, device=self._noise_rng.device)
            scale = delta[n].norm() / noise.norm().clamp(min=1e-12)
            direction = noise * scale

            def hook(module, args, out, d=direction):
                return out + coef * F.linear(args[0], d.to(out.dtype))

            handles.append(layers[n].register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def training_loss(self, model, x, y, task) -> torch.Tensor:
        s = self.draw_sign() if self.params.perturbation != "none" else 0
        with self.perturbed(model, task, s):
            return super().training_loss(model, x, y, task)

    # ---- merging -----------------------------------------------------------------------------------------------
    def end_task(self, model, task, data) -> None:
        name = self.adapter_name(task)
        fisher = self.task_fisher(model, task, data)
        delta = model.delta(name)
        alpha: Alpha = pm_alpha_stream(self.s0, self.s1, self.dhat, fisher, delta, self.params.per_module)
        model.fold_adapter(name, alpha)
        self.s0, self.s1, self.dhat = pm_stream_update(self.s0, self.s1, self.dhat, fisher, delta, alpha)
        self.record = {"alpha": alpha}
        if self.params.perturbation != "none":
            self.record["perturbation_draws"] = dict(zip(("0", "+1", "-1"), self._counts))

    def rng_state(self) -> dict:
        # the draw counters advance with the perturbation generator and are reset by begin_task
        return {**super().rng_state(), "counts": list(self._counts)}

    def load_rng_state(self, state: dict) -> None:
        state = dict(state)
        self._counts = list(state.pop("counts", [0, 0, 0]))
        super().load_rng_state(state)

    def state_dict(self) -> dict:
        return {"s0": self.s0, "s1": self.s1, "dhat": self.dhat}

    def load_state_dict(self, state: dict) -> None:
        self.s0, self.s1, self.dhat = state["s0"], state["s1"], state["dhat"]


@dataclass
class LoraMParams(PMParams):
    perturbation: Perturbation = "none"


@register
class LoraM(PerturbAndMerge):
    name = "lora-m"
    draws_random = False  # no perturbation: nothing is drawn
    description = "LoRA-M (P&M ablation): closed-form Fisher merge coefficient α_t, no perturbation during training"
    Params = LoraMParams


@dataclass
class PMGaussParams(PMParams):
    perturbation: Perturbation = "gaussian"


@register
class PMGauss(PerturbAndMerge):
    name = "pm-gauss"
    description = "P&M ablation: perturbation along a random Gaussian direction (‖Δ‖-scaled) instead of the task vector"
    Params = PMGaussParams
    reconstruction = PerturbAndMerge.reconstruction + "; the Gaussian noise model of the ablation"
