"""Large grids stay cheap to plan: expanding a grid resolves each (benchmark, method, setting, order seed) once and
derives the other training seeds from it, and a YAML file is parsed once per version. Both must give exactly what
resolving every cell from scratch gives."""

import os
import time

import pytest
import yaml

from harness.core.errors import ConfigError
from harness.core.schema import load_yaml
from harness.dispatch.grid import GridSpec, expand, load_grid
from harness.resolve import resolve
from tests.conftest import FAST


def _grid(tmp_path, **kw):
    data = {"name": "g", "benchmarks": ["split-digits-2x5", "split-digits"], "methods": ["seq-lora", "pm"],
            "seeds": [0, 1, 7], "order_seeds": [None, 3], "overrides": FAST, **kw}
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_grid(str(p))


def test_expand_equals_resolving_every_cell(tmp_path):
    grid = _grid(tmp_path, sweep={"train.lr_lora": [1e-3, 5e-4]}, tune=True)
    cells = expand(grid)
    expected, seen = [], set()
    for b in grid.benchmarks:
        for m in grid.methods:
            for lr in (1e-3, 5e-4):
                for o in grid.order_seeds:
                    for s in grid.seeds:
                        c = resolve(b, m, s, o, {**FAST, "train.lr_lora": lr, "tune": True})
                        if c.run_id() not in seen:
                            seen.add(c.run_id())
                            expected.append(c)
    assert cells == expected and [c.run_id() for c in cells] == [c.run_id() for c in expected]
    cells[0].train.epochs = 99  # cells are independent objects: no shared nested config
    assert cells[1].train.epochs == FAST["train.epochs"]


def test_a_seed_override_and_a_bad_seed_behave_as_in_resolve(tmp_path):
    collapsed = expand(_grid(tmp_path, overrides={**FAST, "seed": 5}, benchmarks=["split-digits-2x5"], methods=["seq-lora"]))
    assert [c.seed for c in collapsed] == [5]  # every listed seed is overridden: one cell
    with pytest.raises(ConfigError, match=r"g.yaml \(split-digits-2x5 × seq-lora\): seed: must be an integer in \[0, 2\*\*32\), got -1"):
        expand(_grid(tmp_path, seeds=[0, -1], benchmarks=["split-digits-2x5"], methods=["seq-lora"]))


def test_a_yaml_file_is_parsed_again_when_it_changes(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({"name": "a", "benchmarks": ["x"], "methods": "all", "seeds": [0]}))
    first = load_yaml(GridSpec, p)
    first.seeds.append(9)  # the caller's copy: the cache is not touched
    assert load_yaml(GridSpec, p).seeds == [0]
    p.write_text(yaml.safe_dump({"name": "bb", "benchmarks": ["x"], "methods": "all", "seeds": [0]}))
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert load_yaml(GridSpec, p).name == "bb"
