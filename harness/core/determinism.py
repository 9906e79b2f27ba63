"""Deterministic GPU kernels for a run (`ExecConfig.deterministic`: off | on; `CLMERGE_DETERMINISTIC` sets the default).

On the CPU a run is bit-reproducible as it is: resumed equals uninterrupted, and the smoke table reproduces across
machines. On CUDA, some default kernels are not: flash/memory-efficient attention's backward (the ViT's
scaled_dot_product_attention, also what torch.compile's attention pass produces) accumulates with atomics, so two
identical CUDA runs — and so a resumed and an uninterrupted one — differ in the last bits, and a flipped test image
shows up in the accuracies (measured on an H200: docs/performance.md, "GPU check"). `on` asks torch for
deterministic kernels for the run (`torch.use_deterministic_algorithms(True, warn_only=True)`: an op that has none
warns instead of failing; `cudnn.benchmark` off; cuBLAS's fixed workspace `CUBLAS_WORKSPACE_CONFIG=:4096:8`, which
cuBLAS reads when its handle is made, so before the process's first CUDA matmul). It costs speed; it changes no
result on the CPU, where the default kernels already are deterministic.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from harness.core.errors import ConfigError

CHOICES = ("off", "on")
CUBLAS_WORKSPACE = ":4096:8"


def check(setting: str) -> bool:
    """True for `on`, False for `off`; anything else is a ConfigError naming the valid values."""
    if setting not in CHOICES:
        raise ConfigError(f"deterministic (ExecConfig.deterministic / CLMERGE_DETERMINISTIC): expected off or on, got {setting!r}")
    return setting == "on"


@contextlib.contextmanager
def deterministic_kernels(setting: str) -> Iterator[None]:
    """Inside: torch's deterministic kernels when `setting` is `on` (see the module docstring); the process's previous
    settings are restored on exit, so a test or a notebook that runs one cell is left as it was. `off`: nothing."""
    if not check(setting):
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        if before[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
