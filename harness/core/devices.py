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


def tensors_to(tree: object, device: torch.device) -> object:
    """`tree` (nested dicts, lists and tuples) with every tensor moved to `device`; other values as they are. Used on
    what a checkpoint loaded on the CPU holds for the device (model and method state)."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return type(tree)((k, tensors_to(v, device)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)) and type(tree) in (list, tuple):
        return type(tree)(tensors_to(v, device) for v in tree)
    return tree
