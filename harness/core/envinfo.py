"""The environment a result was produced in: package versions, device, git commit."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from harness.core.paths import project_root

PACKAGES = ("clmerge", "torch", "torchvision", "timm", "peft", "numpy", "datasets", "submitit", "scikit-learn")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        root = str(project_root())
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True, timeout=5)
        # modified tracked files, and untracked code (a new methods/*.py runs from the checkout too)
        dirty = [line for line in status.stdout.splitlines()
                 if not line.startswith("??") or line[3:].startswith(("harness/", "methods/"))]
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name (float results of CPU kernels depend on it)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    import torch

    dev = str(device)
    if getattr(device, "type", "") == "cuda":
        dev = f"{dev} ({torch.cuda.get_device_name(device)})"
    return {
        "packages": {p: _version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": dev,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "git_commit": git_commit(),
    }
