"""torch.compile of the training forward (`ExecConfig.compile`: auto | on | off; `CLMERGE_COMPILE` sets the default).

`auto` compiles on CUDA and stays eager elsewhere, so CPU runs (and the smoke reference) are untouched. What is
compiled is the ViT feature forward with its LoRA layers (`CLModel.features`, backward included through AOTAutograd),
once per run, and only inside the training step loop: evaluation, Fisher passes and the methods' own losses and
penalties stay eager. Nothing a run does from task to task triggers a recompile:

* adapters live in fixed peft slots re-initialised in place per task (CLModel.add_adapter), so modules, parameters
  and the adapter names peft's forward reads are the same objects every task;
* the LoRA scale is a 0-dim tensor swapped by `adapter_output_scale` (P&M's per-step perturbation), not a Python
  float dynamo would specialise on;
* shapes are static: only full batches (`train.batch_size`) take the compiled path; an epoch's last, smaller batch
  runs the same forward eagerly, so every sample still counts exactly once and no graph per remainder size is made.

The heads stay outside the compiled region (a new head per task would otherwise be a new module each task).
Measured on CPU (tests/test_compile.py): one graph over 4 tasks for seq-lora and P&M, with the eager numbers. The
pm-gauss ablation adds forward hooks for its noise on perturbed steps: dynamo makes a graph per hook state (none,
+ε, −ε), 3 in all, still not growing with the tasks. Default inductor on CPU also gives one graph (about 90 s of
compilation on 2 cores for the micro ViT, hence the cheaper backends in the tests).
"""

from __future__ import annotations

import torch

from harness.core.devices import cuda_switch

BACKEND = "inductor"  # torch.compile backend; tests use a cheaper one


def use_compile(setting: str, device: torch.device) -> bool:
    """`auto`: on for CUDA, off elsewhere; `on`/`off` force it. Anything else is a ConfigError."""
    return cuda_switch(setting, device, "compile (ExecConfig.compile / CLMERGE_COMPILE)")
