"""Joint training: the upper bound. After each task t, the pretrained backbone is adapted with one LoRA and one
head over all classes seen so far, trained on the union of the training data of tasks 0..t (the multi-task
reference of the merging literature, e.g. MagMax §4; "joint" in mammoth). Costs Σ_t (t+1) task-epochs.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from harness.method import Method, register


@register
class Joint(Method):
    name = "joint"
    description = "joint training on all classes seen so far from the pretrained weights (upper bound, not continual)"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.pretrained: dict | None = None

    def begin_task(self, model, task) -> None:
        if self.pretrained is None:
            self.pretrained = {n: w.detach().clone() for n, w in model.merged_weights().items()}
        model.set_weights(self.pretrained)
        model.heads.reset()
        model.heads.add(task.offset + task.num_classes, seed=self.task_seed("head", task.index))
        model.add_adapter(self.adapter_name(task), seed=self.task_seed("lora", task.index))

    def train_indices(self, task):
        return np.concatenate([t.train_indices for t in self.ctx.stream.tasks[: task.index + 1]])

    def training_loss(self, model, x, y, task):
        return F.cross_entropy(model(x).float() / self.train_cfg.temperature, y)

    def end_task(self, model, task, data) -> None:
        model.fold_adapter(self.adapter_name(task), 1.0)

    def state_dict(self) -> dict:
        return {"pretrained": self.pretrained}

    def load_state_dict(self, state: dict) -> None:
        self.pretrained = state["pretrained"]
