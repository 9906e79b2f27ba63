"""ExecConfig.deterministic (harness/core/determinism.py): `on` turns torch's deterministic kernels on for the run and
restores the process's settings after it; a bad value is a ConfigError before the cell's directory is touched; CPU
results do not change."""

from __future__ import annotations

import os

import pytest
import torch

from harness.config import ExecConfig
from harness.core.determinism import CUBLAS_WORKSPACE, deterministic_kernels
from harness.core.errors import ConfigError
from harness.resolve import resolve
from harness.store import run_dir
from harness.train import trainer
from harness.train.run import execute
from tests.conftest import FAST

QUIET = ExecConfig(progress=False, device="cpu")


def test_on_enables_deterministic_kernels_inside_and_restores_after(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels("on"):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic_kernels("off"):
        assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a user's own setting is kept
    with deterministic_kernels("on"):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and not torch.are_deterministic_algorithms_enabled()


def test_a_run_trains_under_deterministic_kernels_with_the_same_cpu_numbers(results, monkeypatch):
    cfg = resolve("split-digits-2x5", "seq-lora", seed=0, overrides=FAST)
    seen: list[bool] = []
    original = trainer.run_epoch

    def watched(*args):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(*args)

    monkeypatch.setattr(trainer, "run_epoch", watched)
    on, off = results / "on", results / "off"
    execute(cfg, ExecConfig(progress=False, device="cpu", deterministic="on"), on)
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    seen.clear()
    execute(cfg, ExecConfig(progress=False, device="cpu", deterministic="off"), off)
    assert seen and not any(seen)
    read = lambda root: (run_dir(cfg, root) / "result.json").read_text()  # noqa: E731
    import json

    a, b = json.loads(read(on)), json.loads(read(off))
    assert a["acc_matrix"] == b["acc_matrix"] and a["grad_norms"] == b["grad_norms"]
    assert (a["env"]["deterministic_kernels"], b["env"]["deterministic_kernels"]) == ("on", "off")  # recorded


def test_a_bad_value_is_an_error_before_the_cell_is_touched(results):
    cfg = resolve("split-digits-2x5", "seq-lora", seed=0, overrides=FAST)
    with pytest.raises(ConfigError, match="expected off or on, got 'yes'"):
        execute(cfg, ExecConfig(progress=False, device="cpu", deterministic="yes"), results)
    assert not run_dir(cfg, results).exists()


def test_the_environment_sets_the_default_for_dispatched_grids(monkeypatch):
    """CLMERGE_DETERMINISTIC=on where a grid is submitted: the ExecConfig the dispatchers build (and pickle to their
    jobs) carries it; `clmerge run` takes it as its --deterministic default."""
    from harness.cli import build_parser

    monkeypatch.setenv("CLMERGE_DETERMINISTIC", "on")
    assert ExecConfig().deterministic == "on"
    assert build_parser().parse_args(["run", "--benchmark", "split-digits", "--method", "pm"]).deterministic == "on"
    monkeypatch.delenv("CLMERGE_DETERMINISTIC")
    assert ExecConfig().deterministic == "off"
