"""The GPU path, proven on CPU: RNG states survive any `map_location`, the step loop never synchronises with the
device, and the data/compile options give the same numbers as the plain loop."""

from __future__ import annotations

import pytest
import torch

from harness.config import ExecConfig, resolve
from harness.registry import get_method
from harness.run import execute
from harness.seeding import rng_from_host
from harness.store import run_dir
from harness.trainer import build, restore_rngs
from tests.conftest import FAST
from tests.fakes import crash_in_task_1

QUIET = ExecConfig(progress=False)


def test_epoch_checkpoint_rng_states_restore_from_any_map_location(results, monkeypatch):
    """A CUDA resume loads the epoch checkpoint with map_location=cuda, and Generator.set_state accepts only CPU byte
    tensors. Here the checkpoint is loaded onto the meta device (tensors moved off the host, as a GPU load does):
    every generator state must still restore, bit-equal to a CPU load."""
    cfg = resolve("split-digits-2x5", "pm", seed=4, overrides={**FAST, "train.epochs": 3})
    crash_in_task_1(monkeypatch, get_method("pm"), cfg, epochs_done=1)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, QUIET)
    path = run_dir(cfg) / "checkpoint.epoch.pt"
    on_cpu = torch.load(path, map_location="cpu", weights_only=False)
    on_meta = torch.load(path, map_location="meta", weights_only=False)
    assert on_meta["model"]["merged"] and all(t.is_meta for t in on_meta["model"]["merged"].values())  # it did move

    s = build(cfg, QUIET)
    s.method.begin_task(s.model, s.stream.tasks[1])
    g = torch.Generator()
    with torch.random.fork_rng(devices=[]):
        restore_rngs(on_meta, s.method, g)
        assert torch.equal(torch.get_rng_state(), rng_from_host(on_cpu["torch_rng"]))
    assert torch.equal(g.get_state(), rng_from_host(on_cpu["batches"]))
    restored = s.method.rng_state()
    expected = rng_from_host(on_cpu["method_rng"])
    assert set(restored) == set(expected) and "_rng" in restored  # P&M's perturbation sampler and its counts
    for k, v in expected.items():
        assert torch.equal(restored[k], v) if isinstance(v, torch.Tensor) else restored[k] == v
