"""The documentation's code still works: the methods written in docs/adding-a-method.md register and run, and its
formula-test template passes."""

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
    source = python_blocks(DOCS / "adding-a-method.md")[0]
    registry.method_names()  # discover the real methods first, so the patched copy below holds them all
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


def _exec_block(index: int, monkeypatch) -> types.ModuleType:
    source = python_blocks(DOCS / "adding-a-method.md")[index]
    registry.method_names()  # discover first: discovery inside the patched copy would leave the real registry empty
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    module = types.ModuleType(f"docs_example_{index}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, "docs/adding-a-method.md", "exec"), module.__dict__)
    return module


def test_the_fisher_recipe_registers_runs_and_merges_by_the_accumulated_fisher(results, monkeypatch):
    import pytest
    import torch

    from harness.core.errors import ConfigError

    assert len(python_blocks(DOCS / "adding-a-method.md")) == 3
    _exec_block(1, monkeypatch)
    cls = registry.get_method("fisher-recipe")
    assert cls.state_changes_in_task is False
    with pytest.raises(ConfigError, match="floor"):
        resolve("split-digits", "fisher-recipe", overrides={**FAST, "method.floor": -1.0})
    quiet = ExecConfig(progress=False)
    s = build(resolve("split-digits", "fisher-recipe", overrides=FAST), quiet)
    state = run_tasks(s, quiet, stop_after=2)
    assert state.tasks_done == 2 and s.model.adapters() == []
    m = s.method
    # the merged weights are W0 + the stored Fisher-weighted average, and the Fisher sum has two tasks' mass
    for n, w in s.model.merged_weights().items():
        torch.testing.assert_close(w, m.w0[n] + m.merged[n].to(w.dtype))
    assert all(float(v.min()) >= 2e-6 for v in m.fisher_sum.values())


def test_the_formula_test_template_passes(monkeypatch):
    module = _exec_block(2, monkeypatch)
    module.test_fisher_merge_hand_worked()


def _first_column_names(table_text: str) -> set[str]:
    """The `name`s in the first column of a Markdown table (a cell may name several: `pm`, `lora-m`)."""
    names = set()
    for line in table_text.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_every_registered_method_has_a_row_and_a_formula_in_docs_methods():
    """docs/methods.md: a new method in methods/ needs a row in the sources table and one in the Formulas table
    (docs/adding-a-method.md says so); this names the missing ones."""
    text = (DOCS / "methods.md").read_text()
    sources, _, rest = text.partition("## Formulas")
    formulas = rest.split("\n## ")[0]
    registered = set(registry.method_names())
    assert not registered - _first_column_names(sources), "methods without a row in docs/methods.md's first table"
    assert not registered - _first_column_names(formulas), "methods without a row in docs/methods.md's Formulas table"
