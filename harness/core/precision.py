"""The run's mixed precision, shared by training, evaluation and the Fisher pass (harness/train/trainer.py,
harness/math/fisher.py): bf16 autocast on CUDA, nothing on CPU (bf16 matmuls on CPU are slow and change results, and CPU
runs must stay bit-identical to the fp32 reference). Its own module so that harness/math/fisher.py needs no import of
the trainer."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def autocast(device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA; a null context on every other device."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device: torch.device) -> ContextManager:
    """Autocast off inside a bf16 region (fp32 math for penalties, Gram matrices, merges) on CUDA; a null context on
    every other device, where no autocast runs."""
    if device.type == "cuda":
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()
