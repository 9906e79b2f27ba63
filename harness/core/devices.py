"""Device helpers shared by the data path and the trainer: host→device copies that never block the host, and the
`auto | on | off` execution switches that default to on for CUDA only."""

from __future__ import annotations

import torch

from harness.core.errors import ConfigError

SWITCH_CHOICES = ("auto", "on", "off")


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without blocking the host: pinned, then copied with non_blocking=True on CUDA; a
    plain non_blocking copy on other accelerators; a no-op on CPU."""
    if device.type == "cpu":
        return t
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


def cuda_switch(setting: str, device: torch.device, what: str) -> bool:
    """An execution switch: `auto` is on for CUDA and off elsewhere, `on`/`off` force it. Anything else is a
    ConfigError that starts with `what` (the setting's name and where it is set)."""
    if setting not in SWITCH_CHOICES:
        raise ConfigError(f"{what}: expected auto, on or off, got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")
