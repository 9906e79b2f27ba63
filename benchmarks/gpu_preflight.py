"""Pre-flight of the GPU check (benchmarks/gpu_check.sh): which torch, which CUDA build, which GPU and driver, and one
training step of the micro model with its new head and LoRA on the run's device (the device-placement bug of issue
20 would fail here in seconds, not an hour into a SLURM array).

    python benchmarks/gpu_preflight.py                 # device auto (CUDA when torch can use it; an error when a GPU is
                                                       # shown but torch cannot use it)
    python benchmarks/gpu_preflight.py --device cpu    # the same step on the CPU (the check's dry run)

Prints one `key: value` line per fact and `PREFLIGHT OK` last; exits 3 when the device is not usable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from harness.core.devices import visible_nvidia_gpu  # noqa: E402
from harness.core.errors import ConfigError  # noqa: E402
from harness.model.backbone import BackboneConfig, CLModel  # noqa: E402
from harness.train.setup import pick_device  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    facts: dict = {"torch": torch.__version__, "torch CUDA build": torch.version.cuda or "none",
                   "cuda available": torch.cuda.is_available(), "visible GPU": visible_nvidia_gpu() or "none"}
    try:
        device = pick_device(args.device)
    except ConfigError as exc:
        facts["error"] = str(exc)
        _print(facts)
        raise SystemExit(3)
    facts["device"] = str(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        facts["gpu"] = f"{torch.cuda.get_device_name(device)} | capability {torch.cuda.get_device_capability(device)} | " \
                       f"free {free / 2**30:.0f}/{total / 2**30:.0f} GiB"
    model = CLModel(BackboneConfig(preset="vit-micro-test")).to(device)
    head = model.heads.add(3, seed=0)
    params = model.add_adapter("t0", seed=1) + list(head.parameters())
    facts["new head on"] = str(head.weight.device)
    facts["new LoRA on"] = str(params[0].device)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)).to(device)
    loss = model(x).float().logsumexp(1).mean()
    loss.backward()
    torch.optim.AdamW(params, foreach=True).step()
    facts["one training step"] = f"loss {loss.item():.4f}, every tensor on {device}"
    _print(facts)
    print("PREFLIGHT OK")
    return facts


def _print(facts: dict) -> None:
    for k, v in facts.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
