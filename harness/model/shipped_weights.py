"""Backbone weights shipped in the repository, pinned by SHA-256 (like timm's or torchvision's pretrained files).

The embedded CPU backbone `vit-tiny-digits-mnist` is pre-trained by clmerge's own recipe (harness/model/pretrain.py). Its
weights are committed under `harness/model/weights/` and loaded by default, so every machine starts from the same bytes:
pre-training on each machine gave a different backbone per CPU (float kernels differ) and with it a different smoke
table. A file whose hash is not the pinned one is refused. `clmerge pretrain` reruns the recipe and says whether this
machine reproduces the shipped bytes (it need not: see docs/reproducibility.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from harness.core.errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_path(preset) -> Path:
    return WEIGHTS_DIR / preset.weights_file


def check_shipped(preset) -> Path:
    """The shipped file of `preset`, after checking it exists and has the pinned SHA-256 (ConfigError otherwise)."""
    path = shipped_path(preset)
    restore = f"restore it with `git checkout -- {path.relative_to(WEIGHTS_DIR.parents[2])}`" if path.is_relative_to(
        WEIGHTS_DIR.parents[2]) else "reinstall clmerge"
    if not path.exists():
        raise ConfigError(f"backbone {preset.name}: its shipped weights {path} are missing; {restore}, or pass "
                          f"--set backbone.weights=FILE (e.g. a file written by `clmerge pretrain {preset.name}`)")
    got = sha256_file(path)
    if got != preset.weights_sha256:
        raise ConfigError(
            f"backbone {preset.name}: {path} has SHA-256 {got}, but the preset pins {preset.weights_sha256}. The file "
            f"is corrupt or was replaced; {restore}. To use other weights on purpose, pass --set backbone.weights=FILE."
        )
    return path


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch checkpoint (tensors only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ConfigError(f"backbone.weights: {path} does not hold a state dict (got {type(state).__name__})")
    return state


def load_shipped(preset) -> dict[str, torch.Tensor]:
    return load_weights_file(check_shipped(preset))


def save_weights(state: dict[str, torch.Tensor], path: Path) -> str:
    """Write `state` as safetensors atomically; return the file's SHA-256."""
    from safetensors.torch import save

    from harness.core.io import atomic_write_bytes

    atomic_write_bytes(Path(path), save({k: v.contiguous() for k, v in sorted(state.items())}))
    return sha256_file(path)
