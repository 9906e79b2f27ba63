"""Hyper-parameter sweeps in grids: `sweep:` (every method) and `method_sweep:` (one method's own keys) map override
keys to lists of values, expanded as a cartesian product per method.

    tune: true                                   # hold out a validation split to select on (harness/data/validation.py)
    sweep: {train.lr_lora: [5e-4, 1e-3]}
    method_sweep: {pm: {method.epsilon: [0.25, 0.5, 1.0]}, ties: {method.lam: [0.4, 0.55]}}

Each setting is an ordinary override set, so a cell stays content-addressed (its run id is the hash of its resolved
config) and a value shared with another grid is not rerun. Everything is checked before anything runs: an unknown
key, an empty list, a value of the wrong type, a seed axis in a sweep, or more than one setting without `tune: true`
(the only split left to select on would be the test split) is a ConfigError naming the key.
"""

from __future__ import annotations

import itertools
from typing import Any

from harness.core.errors import ConfigError, unknown

AXES = ("seed", "order_seed", "tune")  # the grid's own axes and switch, never swept


def method_keys(grid, method: str) -> dict[str, list[Any]]:
    """The swept keys of one method's cells and their values: `sweep` then `method_sweep[method]` (which wins).
    YAML 1.1 reads `5e-4` as a string; like `--set`, such strings are taken as the number they spell."""
    from harness.config import _number

    merged = {**grid.sweep, **grid.method_sweep.get(method, {})}
    return {k: [_number(v) for v in vs] if isinstance(vs, list) else vs for k, vs in merged.items()}


def settings(grid, method: str) -> list[dict[str, Any]]:
    """Every setting of `method` as an override dict, in the order of the YAML lists (first key varies slowest)."""
    keys = method_keys(grid, method)
    return [dict(zip(keys, combo)) for combo in itertools.product(*keys.values())]


def swept_keys(grid) -> list[str]:
    """Every key swept for some method, in order of appearance."""
    keys = list(grid.sweep)
    for per_method in grid.method_sweep.values():
        keys += [k for k in per_method if k not in keys]
    return keys


def check_grid_method(name: str, methods: list[str], where: str) -> None:
    """A per-method section (method_overrides, method_sweep) must name one of the grid's methods; a registered method
    left out of `methods:` is told apart from an unknown one."""
    from harness.method.registry import method_names

    if name in methods:
        return
    if name in method_names():
        raise ConfigError(f"{where}.{name}: {name!r} is a registered method but not one of this grid's methods "
                          f"({', '.join(methods)}); add it to `methods:` or remove its entry")
    raise unknown("method", name, method_names(), where)


def validate(grid, methods: list[str]) -> None:
    """Refuse a bad sweep before any cell runs, naming the key (and method) at fault."""
    from harness.config import valid_override_keys
    from harness.core.schema import field_names
    from harness.method.registry import get_method
    from harness.resolve import resolve

    for m in grid.method_sweep:
        check_grid_method(m, methods, f"{grid.file}.method_sweep")
    where_of = {k: f"{grid.file}.sweep.{k}" for k in grid.sweep}
    for method in methods:
        valid = valid_override_keys(get_method(method).Params)
        for key, values in method_keys(grid, method).items():
            where = f"{grid.file}.method_sweep.{method}.{key}" if key in grid.method_sweep.get(method, {}) else where_of[key]
            if key in AXES:
                raise ConfigError(f"{where}: {key!r} is an axis of the grid (seeds/order_seeds) or its switch (tune), "
                                  "not a hyper-parameter to sweep")
            if key not in valid:
                hint = (" (a method's own key belongs in method_sweep: {METHOD: {...}})"
                        if key.startswith("method.") and key in grid.sweep else "")
                if key.startswith("method.") and not field_names(get_method(method).Params):
                    hint = f" (method {method!r} has no parameters: no method.* key applies to it)"
                raise ConfigError(f"{where}: unknown key {key!r} for method {method!r}{hint}; valid keys: {', '.join(valid)}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: give a non-empty list of values, got {values!r}")
            for i, value in enumerate(values):  # the value's type, checked by resolving one cell with it alone
                resolve(grid.benchmarks[0], method, grid.seeds[0], None,
                        {**grid.overrides, **grid.method_overrides.get(method, {}), key: value},
                        where=f"{where}[{i}] = {value!r}")
        if len(settings(grid, method)) > 1 and not grid.tune:
            raise ConfigError(f"{grid.file}: the sweep gives {method!r} {len(settings(grid, method))} settings but the "
                              "grid has no `tune: true`; a setting is selected on the validation split it holds out, "
                              "never on the test split")


def setting_label(cfg, keys: list[str]) -> str:
    """The swept values of a cell, read from its resolved config: 'lr_lora=0.0005, epsilon=0.25' ('default' if none)."""
    d = cfg.to_dict()
    parts = []
    for key in keys:
        section, _, name = key.partition(".")
        holder = {"train": d["train"], "backbone": d["backbone"], "method": d["method_params"]}.get(section)
        if holder is not None and name in holder:
            parts.append(f"{name}={holder[name]:g}" if isinstance(holder[name], float) else f"{name}={holder[name]}")
    return ", ".join(parts) or "default"
