"""Sequential LoRA: the "LoRA" row of the P&M tables (Qiu et al., NeurIPS 2025, Table 2).

Each task trains a new LoRA on k/v starting from the current weights and folds it in fully (α = 1):
θ̂_t = θ̂_{t−1} + Δ_t. No regularisation, no stored state — the lower bound every merging method improves on.
"""

from __future__ import annotations

from harness.method import Method, register


@register
class SeqLoRA(Method):
    name = "seq-lora"
    description = "sequential LoRA: train a new LoRA per task from the current weights, fold it in fully (lower bound)"

    def end_task(self, model, task, data) -> None:
        model.fold_adapter(self.adapter_name(task), 1.0)
