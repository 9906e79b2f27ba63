"""Device helpers shared by the data path and the trainer: host→device copies that never block the host, and the
`auto | on | off` execution switches that default to on for CUDA only."""

from __future__ import annotations

import torch

from harness.core.errors import ConfigError

SWITCH_CHOICES = ("auto", "on", "off")


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without blocking the host: pinned, then copied with non_blocking=True (from pageable
    memory a non_blocking copy is synchronous on CUDA); a no-op on CPU."""
    if device.type == "cpu":
        return t
    if t.device.type != "cpu":  # already off the host: a device-to-device copy at most
        return t.to(device, non_blocking=True)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


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


def visible_nvidia_gpu() -> str | None:
    """A description of the NVIDIA GPU this machine shows, whether or not torch can use it: `nvidia-smi`'s first GPU
    (name, driver version), else the driver's /proc version line or a /dev/nvidiaN node; None when none is shown."""
    import glob
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
            if line:
                name, _, driver = line.rpartition(",")
                return f"{name.strip()} (driver {driver.strip()})"
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open("/proc/driver/nvidia/version") as fh:
            return f"an NVIDIA GPU ({fh.readline().strip()})"
    except OSError:
        pass
    nodes = sorted(glob.glob("/dev/nvidia[0-9]*"))
    return f"an NVIDIA GPU ({nodes[0]}; driver version unknown)" if nodes else None


def unusable_gpu_message(gpu: str) -> str:
    """Why a run stops when the machine shows `gpu` but torch cannot use it, and what to do."""
    built = torch.version.cuda
    return (
        f"this machine shows {gpu}, but torch {torch.__version__} cannot use it (torch is built for CUDA "
        f"{built or 'none: a CPU-only build'}; torch.cuda.is_available() is False). "
        + (f"A CUDA {built} build needs an NVIDIA driver that supports CUDA {built}: update the driver, or install a "
           "torch wheel built for the CUDA version the driver supports (https://pytorch.org/get-started/locally, "
           "e.g. --index-url https://download.pytorch.org/whl/cu126). " if built else
           "Install a CUDA build of torch (https://pytorch.org/get-started/locally). ")
        + "To train on the CPU anyway, say so: --device cpu (ExecConfig.device)."
    )
