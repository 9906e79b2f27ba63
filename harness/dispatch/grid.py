"""Grids: a YAML file of benchmarks × methods × seeds (with overrides) that expands to run configs (cells).

    name: smoke
    benchmarks: [split-digits]
    methods: all                 # or a list of registered names
    seeds: [0, 1, 2]             # training seeds
    order_seeds: [null]          # class-order seeds (null: the benchmark's own)
    overrides: {train.epochs: 5}                 # every cell
    method_overrides: {joint: {train.epochs: 5}} # cells of one method
    tune: true                   # hold out a validation split (selection in sweep reports)
    sweep: {train.lr_lora: [5e-4, 1e-3]}         # cartesian product per method (harness/dispatch/sweep.py)
    method_sweep: {pm: {method.epsilon: [0.25, 0.5]}}
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import RunConfig, check_seed, config_hash
from harness.core.errors import ConfigError, unknown
from harness.core.paths import grids_dir
from harness.core.schema import load_yaml
from harness.dispatch import sweep
from harness.resolve import resolve


@dataclass
class GridSpec:
    name: str
    benchmarks: list[str]
    methods: str | list[str]
    seeds: list[int]
    description: str = ""
    order_seeds: list[int | None] = field(default_factory=lambda: [None])
    overrides: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    tune: bool = False
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    method_sweep: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    file: str = ""

    def validate(self, where: str) -> None:
        if isinstance(self.methods, str) and self.methods != "all":
            raise ConfigError(f"{where}.methods: give a list of method names or 'all', got {self.methods!r}")
        for key, value in {"benchmarks": self.benchmarks, "seeds": self.seeds, "order_seeds": self.order_seeds}.items():
            if not value:
                raise ConfigError(f"{where}.{key}: must not be empty")

    def method_list(self) -> list[str]:
        from harness.method.registry import method_names

        names = method_names()
        if self.methods == "all":
            return names
        for m in self.methods:
            if m not in names:
                raise unknown("method", m, names, f"{self.file}.methods")
        return list(self.methods)


def available_grids() -> list[str]:
    return sorted(p.stem for p in grids_dir().glob("*.yaml"))


def load_grid(name_or_path: str) -> GridSpec:
    path = Path(name_or_path)
    if not path.exists():
        path = grids_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"grid {name_or_path!r} is neither a file nor a name in grids/; available: {', '.join(available_grids())}")
    return load_yaml(GridSpec, path)


def runs_in(method: str, benchmark: str) -> bool:
    """Whether `method` declares the scenario of `benchmark` (Method.scenarios); says so on stderr when not."""
    import sys

    from harness.data.spec import load_spec
    from harness.method.registry import get_method

    cls, scenario = get_method(method), load_spec(benchmark).scenario
    if scenario in cls.scenarios:
        return True
    print(f"note: {method} left out of {benchmark} ({scenario}): it runs in {', '.join(cls.scenarios)} only"
          + (f" ({cls.scenario_note})" if cls.scenario_note else ""), file=sys.stderr)
    return False


def expand(grid: GridSpec) -> list[RunConfig]:
    """Every cell of the grid as a resolved RunConfig, in benchmark → method → setting → order seed → seed order."""
    methods = grid.method_list()
    for m in grid.method_overrides:
        if m not in methods:
            raise unknown("method in method_overrides", m, methods, grid.file)
    sweep.validate(grid, methods)
    tune = {"tune": True} if grid.tune else {}
    cells, seen = [], set()
    for bench in grid.benchmarks:
        for method in methods:
            if grid.methods == "all" and not runs_in(method, bench):
                continue  # `all` means every method that can run on the benchmark; a named method is refused by resolve
            for setting in sweep.settings(grid, method):
                overrides = {**grid.overrides, **grid.method_overrides.get(method, {}), **setting, **tune}
                for order_seed in grid.order_seeds:
                    where = f"{grid.file} ({bench} × {method})"
                    first: RunConfig | None = None
                    for seed in grid.seeds:
                        if first is None or "seed" in overrides:
                            cfg = first = resolve(bench, method, seed, order_seed, overrides, where=where)
                            first_dict = first.to_dict()
                            rid = config_hash(first_dict)
                        else:  # what resolve gives for another training seed, without re-resolving (large grids)
                            check_seed(seed, f"{where}: seed")
                            cfg = copy.deepcopy(first)
                            cfg.seed = seed
                            rid = config_hash({**first_dict, "seed": seed})  # = cfg.run_id(), without to_dict
                        if rid not in seen:  # e.g. order seeds collapse on a natural-order benchmark
                            seen.add(rid)
                            cells.append(cfg)
    return cells
