"""The documentation's code still works: the method written in docs/adding-a-method.md registers and runs."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

from harness.config import ExecConfig
from harness.method import registry
from harness.resolve import resolve
from harness.train.setup import build
from harness.train.trainer import run_tasks
from tests.conftest import FAST

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_documented_method_registers_and_runs(results, monkeypatch):
    (source,) = python_blocks(DOCS / "adding-a-method.md")
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the example does not outlive the test
    module = types.ModuleType("docs_example")
    monkeypatch.setitem(sys.modules, "docs_example", module)  # dataclasses look their module up there
    exec(compile(source, "docs/adding-a-method.md", "exec"), module.__dict__)
    cls = registry.get_method("half-merge")
    assert cls.Params().coef == 0.5

    quiet = ExecConfig(progress=False)
    s = build(resolve("split-digits", "half-merge", overrides=FAST), quiet)
    merged_before = {n: w.clone() for n, w in s.model.merged_weights().items()}
    state = run_tasks(s, quiet, stop_after=1)
    assert state.tasks_done == 1 and 0.0 <= state.acc[0][0] <= 1.0
    assert s.model.adapters() == []  # end_task folded the task's LoRA and dropped it
    assert any(not (w == merged_before[n]).all() for n, w in s.model.merged_weights().items())
