"""Seeds derived from the run config. No global RNG is mutated outside a `seeded` block."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (e.g. run seed, 'task', 3): same parts → same seed, in any process."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (layer init in timm/peft, which use the global RNG) under `seed`, restoring the RNG after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def rng_to_host(state: object) -> object:
    """A generator state tree (tensors inside dicts/lists) with every tensor as a NumPy uint8 array, for checkpoints:
    `torch.load(map_location=...)` moves tensors but never NumPy arrays, so RNG states stay host-side whatever device
    a run is resumed on (`torch.Generator.set_state` accepts only CPU byte tensors)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", torch.uint8).numpy().copy()
    if isinstance(state, dict):
        return {k: rng_to_host(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(rng_to_host(v) for v in state)
    return state


def rng_from_host(state: object) -> object:
    """Inverse of `rng_to_host`: NumPy arrays (or tensors on any device, from older checkpoints) → CPU ByteTensors."""
    import numpy as np

    if isinstance(state, np.ndarray):
        return torch.from_numpy(state.copy())
    if isinstance(state, torch.Tensor):
        return cpu_byte_state(state)
    if isinstance(state, dict):
        return {k: rng_from_host(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(rng_from_host(v) for v in state)
    return state


def cpu_byte_state(state: torch.Tensor) -> torch.Tensor:
    """A generator state as `torch.Generator.set_state` needs it: a CPU uint8 tensor (a state loaded with
    `map_location="cuda"` is on the GPU; set_state would reject it)."""
    if state.device.type == "meta":
        raise ValueError("generator state was loaded on the meta device: its bytes are gone; load it on the CPU")
    return state.detach().to("cpu", torch.uint8)
