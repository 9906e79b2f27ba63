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
