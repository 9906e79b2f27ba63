"""The leaderboard: published tables as data, the clmerge cells that reproduce them, verdicts, and reports.

Data (committed with the checkout, `results/reference/`, or `$CLMERGE_REFERENCE`):

    published.csv    one row per published number: paper, table, benchmark, protocol, method, metric, value, std,
                     seeds, provenance (paper-text | official-log | secondary-note | aggregator), note
    presets.yaml     protocol presets: named run-config overrides (e.g. `pm`: P&M's optimiser, epochs, backbone)
    tables/*.yaml    table definitions (`TableSpec`): which published rows form a table and which clmerge cells
                     (benchmark × method × preset × seeds, with overrides) reproduce each row

A table row is *runnable* when its method is registered (methods/) and its benchmark exists (datasets/). A method
or benchmark that is planned but not written yet (`PLANNED_METHODS`, `PLANNED_BENCHMARKS`) or a published number
with no clmerge counterpart (a paper's own method, a benchmark nobody plans) shows as "no implementation"; any other
name is a typo and raises ConfigError naming the valid ones.

Outputs (`write_report`): `<results>/tables/<name>.md|.csv|.tex` and `<results>/plots/<name>-vs-published.png`,
`<name>-curves.png`, `<name>/matrix-*.png`. Values are in % (clmerge stores fractions); ours = mean ± sample std
(ddof = 1) over the finished seeds, as harness/report.py. See `verdict` for the rule.

API for the CLI: `list_tables()`, `table_cells(name, seeds=None)`, `write_report(name, root=None, seeds=None)`.
"""

from __future__ import annotations

import csv
import fnmatch
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.config import TOP_LEVEL_KEYS, RunConfig, TrainConfig, resolve
from harness.errors import ConfigError, unknown
from harness.io import atomic_savefig, atomic_write_text
from harness.paths import project_root, results_dir
from harness.report import mean_std
from harness.schema import field_names, from_dict, load_named_yaml, load_yaml

# --------------------------------------------------------------------------------------------------------------------
# Names that are not registered yet but are known to be coming (other issues). Anything else unknown is a typo.

PLANNED_METHODS: dict[str, str] = {}  # every method of the seed papers is registered now

PLANNED_BENCHMARKS: dict[str, str] = {}  # every benchmark of the seed papers has a spec now

# Benchmarks that published numbers use but that no issue plans (or whose task count the source does not give).
REFERENCE_ONLY_BENCHMARKS: dict[str, str] = {
    "cifar100-5": "CIFAR-100, 5 tasks (not planned)",
    "cifar100-20": "CIFAR-100, 20 tasks (not planned)",
    "cars196-10": "Stanford Cars, 10 tasks (not planned)",
    "cifar100": "CIFAR-100, number of tasks not given by the source",
    "imagenet-r": "ImageNet-R, number of tasks not given by the source",
}

METRICS: dict[str, str] = {"a_last": "A_last", "a_avg": "A_avg", "forgetting": "Forgetting"}
Metric = Literal["a_last", "a_avg", "forgetting"]
Provenance = Literal["paper-text", "official-log", "secondary-note", "aggregator"]

# --------------------------------------------------------------------------------------------------------------------
# The verdict rule

DEFAULT_TOLERANCE = 1.0  # percentage points

REPRODUCED = "reproduced"
DIFFERS = "differs"
NOT_RUN = "not run"
NO_IMPLEMENTATION = "no implementation"
PROTOCOL_DIFFERS = "protocol differs"
NO_REFERENCE = "no reference"
VERDICTS = (REPRODUCED, DIFFERS, NOT_RUN, NO_IMPLEMENTATION, PROTOCOL_DIFFERS, NO_REFERENCE)

VERDICT_RULE = (
    "reproduced if |Δ| ≤ max(tolerance, 2σ), where Δ = ours − published, σ = √(σ_ours² + σ_pub²), σ_ours = std over "
    "seeds (ddof = 1; 0 with one seed), σ_pub = the published std where the paper prints one (else 0); differs "
    "otherwise. Checked in this order: no implementation (the method or benchmark does not exist in clmerge yet, or "
    "clmerge has no counterpart); not run (no finished seed); no reference (nothing published); protocol differs "
    "(the number was published under another backbone, split, class order or code base: ours and Δ are shown, no "
    "verdict is drawn)."
)


def _finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def verdict(
    ours_mean: float | None,
    ours_std: float | None,
    n: int,
    published: float | None,
    published_std: float | None = None,
    *,
    implemented: bool = True,
    same_protocol: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """The verdict of one table cell. All values in percentage points.

    - "no implementation": `implemented` is False (method or benchmark missing, or no clmerge counterpart);
    - "not run": no finished seed (`n == 0` or no mean);
    - "no reference": nothing published to compare with (`published` is None);
    - "protocol differs": `same_protocol` is False — shown, not judged;
    - "reproduced": |ours − published| ≤ max(tolerance, 2σ), σ = √(ours_std² + published_std²), a missing or NaN
      std counting as 0 (one seed, or a paper without std);
    - "differs": otherwise.
    """
    if not implemented:
        return NO_IMPLEMENTATION
    if n <= 0 or not _finite(ours_mean):
        return NOT_RUN
    if not _finite(published):
        return NO_REFERENCE
    if not same_protocol:
        return PROTOCOL_DIFFERS
    s_ours = ours_std if (n > 1 and _finite(ours_std)) else 0.0
    s_pub = published_std if _finite(published_std) else 0.0
    bound = max(tolerance, 2.0 * math.sqrt(s_ours**2 + s_pub**2))
    return REPRODUCED if abs(ours_mean - published) <= bound + 1e-9 else DIFFERS


def bound_of(ours_std: float | None, n: int, published_std: float | None, tolerance: float) -> float:
    """The |Δ| bound `verdict` uses (for display)."""
    s_ours = ours_std if (n > 1 and _finite(ours_std)) else 0.0
    s_pub = published_std if _finite(published_std) else 0.0
    return max(tolerance, 2.0 * math.sqrt(s_ours**2 + s_pub**2))


# --------------------------------------------------------------------------------------------------------------------
# Name status against the registries


def method_status(name: str, where: str = "") -> str:
    """'registered' or 'planned'; ConfigError (a typo) otherwise."""
    from harness.registry import method_names

    names = method_names()
    if name in names:
        return "registered"
    if name in PLANNED_METHODS:
        return "planned"
    raise unknown("method", name, sorted(set(names) | set(PLANNED_METHODS)), where)


def benchmark_status(name: str, where: str = "", reference_only: bool = True) -> str:
    """'available', 'planned' or 'reference-only'; ConfigError (a typo) otherwise."""
    from harness.spec import available_benchmarks

    names = available_benchmarks()
    if name in names:
        return "available"
    if name in PLANNED_BENCHMARKS:
        return "planned"
    if reference_only and name in REFERENCE_ONLY_BENCHMARKS:
        return "reference-only"
    valid = set(names) | set(PLANNED_BENCHMARKS) | (set(REFERENCE_ONLY_BENCHMARKS) if reference_only else set())
    raise unknown("benchmark", name, sorted(valid), where)


# --------------------------------------------------------------------------------------------------------------------
# Data files


def reference_dir() -> Path:
    env = os.environ.get("CLMERGE_REFERENCE")
    return Path(env) if env else project_root() / "results" / "reference"


def tables_dir() -> Path:
    return reference_dir() / "tables"


@dataclass
class PublishedRow:
    """One published number (a row of published.csv). `value`/`std` in % (forgetting too)."""

    id: str
    paper: str
    arxiv: str
    venue: str
    table: str
    benchmark: str
    protocol: str
    method: str  # a clmerge name (registered or planned), or the paper's name when clmerge has no counterpart
    method_as_published: str
    metric: Metric
    value: float
    std: float | None
    seeds: str
    provenance: Provenance
    note: str

    def validate(self, where: str) -> None:
        if not self.id or any(c.isspace() for c in self.id):
            raise ConfigError(f"{where}.id: must be non-empty without spaces, got {self.id!r}")
        if not 0.0 <= self.value <= 100.0:
            raise ConfigError(f"{where}.value: a percentage in [0, 100], got {self.value}")
        if self.std is not None and self.std < 0:
            raise ConfigError(f"{where}.std: must be >= 0, got {self.std}")
        for key in ("paper", "table", "benchmark", "method", "method_as_published", "seeds"):
            if not getattr(self, key):
                raise ConfigError(f"{where}.{key}: must not be empty")

    @property
    def value_text(self) -> str:
        """The value with the decimals the source printed."""
        return getattr(self, "_value_text", f"{self.value:.2f}")

    @property
    def std_text(self) -> str | None:
        return getattr(self, "_std_text", None if self.std is None else f"{self.std:.2f}")

    def counterpart(self) -> str | None:
        """The clmerge method this number is attributed to, or None when `method` is the paper's own name."""
        return None if self.method == self.method_as_published else self.method


PUBLISHED_COLUMNS = field_names(PublishedRow)
NOTE_SEPARATOR = " | "  # separates the independent remarks in published.csv's note column


def _num(text: str, where: str, optional: bool) -> float | None:
    text = text.strip()
    if not text:
        if optional:
            return None
        raise ConfigError(f"{where}: a number is required")
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a number: {text!r}") from exc


def load_published(path: Path | None = None) -> dict[str, PublishedRow]:
    """published.csv → {id: PublishedRow}, in file order. Checks columns, types, ranges and unique ids (not registries)."""
    path = Path(path or reference_dir() / "published.csv")
    if not path.exists():
        raise ConfigError(f"published numbers not found: {path}")
    out: dict[str, PublishedRow] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != PUBLISHED_COLUMNS:
            raise ConfigError(f"{path}: columns must be {', '.join(PUBLISHED_COLUMNS)}; got {', '.join(reader.fieldnames or [])}")
        for line, raw in enumerate(reader, start=2):
            where = f"{path}:{line}"
            data: dict[str, Any] = {k: (v or "").strip() for k, v in raw.items()}
            data["value"] = _num(data["value"], f"{where}.value", optional=False)
            data["std"] = _num(data["std"], f"{where}.std", optional=True)
            row = from_dict(PublishedRow, data, where)
            row._value_text = raw["value"].strip()  # type: ignore[attr-defined]
            if row.std is not None:
                s = raw["std"].strip()
                row._std_text = "0" + s if s.startswith(".") else s  # type: ignore[attr-defined]
            if row.id in out:
                raise ConfigError(f"{where}: duplicate id {row.id!r}")
            out[row.id] = row
    return out


def check_published(rows: dict[str, PublishedRow] | list[PublishedRow], where: str = "published.csv") -> None:
    """Registry check of published rows: benchmarks and clmerge method names must be known (typos → ConfigError)."""
    for row in rows.values() if isinstance(rows, dict) else rows:
        w = f"{where} row {row.id!r}"
        benchmark_status(row.benchmark, w)
        if row.counterpart() is not None:
            method_status(row.method, f"{w} (method differs from method_as_published, so it must be a clmerge name)")


@dataclass
class Preset:
    """A protocol preset: run-config overrides (keys as `clmerge run --set`)."""

    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    not_expressible: str = ""


@dataclass
class PresetFile:
    presets: dict[str, Preset]
    file: str = ""


def load_presets(path: Path | None = None) -> dict[str, Preset]:
    path = Path(path or reference_dir() / "presets.yaml")
    if not path.exists():
        return {}
    presets = load_yaml(PresetFile, path).presets
    for name, p in presets.items():
        _check_override_keys(p.overrides, None, f"{path}.presets.{name}.overrides")
    return presets


# --------------------------------------------------------------------------------------------------------------------
# Table definitions


@dataclass
class TableRow:
    """One or more published rows (`ref`: an id of published.csv, or a glob over ids) and how clmerge reproduces them.

    `method` defaults to the published row's clmerge counterpart (its `method` column when that differs from
    `method_as_published`; none otherwise → "no implementation"); `benchmark` to the published row's benchmark.
    `protocol: differs` marks a number obtained under another protocol than the clmerge cells' (no verdict drawn)."""

    ref: str
    method: str | None = None
    benchmark: str | None = None
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    protocol: Literal["same", "differs"] | None = None
    note: str = ""


@dataclass
class TableSpec:
    """A table: published rows (`rows`) or a grid's cells (`grid`, no published numbers), and the cells' protocol.

    Override order for a row's cells (later wins): the benchmark spec → preset (row's, else the table's) → `overrides`
    → `benchmark_overrides[benchmark]` → `method_overrides[method]` → the row's `overrides`.
    """

    name: str
    description: str
    title: str = ""
    source: str = ""
    rows: list[Any] = field(default_factory=list)  # each: a published id / glob, or a TableRow mapping
    grid: str | None = None
    metrics: list[Metric] = field(default_factory=lambda: ["a_last", "a_avg"])  # grid tables only
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    order_seeds: list[int | None] = field(default_factory=lambda: [None])
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    benchmark_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE
    protocol: Literal["same", "differs"] = "same"
    protocol_note: str = ""
    file: str = ""

    def validate(self, where: str) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            raise ConfigError(f"{where}.name: lower-case letters, digits, '.', '_' or '-', got {self.name!r}")
        if (self.grid is None) == (not self.rows):
            raise ConfigError(f"{where}: give exactly one of 'rows' (published rows) or 'grid' (a grid's cells)")
        if not self.seeds:
            raise ConfigError(f"{where}.seeds: must not be empty")
        if not self.order_seeds:
            raise ConfigError(f"{where}.order_seeds: must not be empty")
        if self.tolerance < 0:
            raise ConfigError(f"{where}.tolerance: must be >= 0 (percentage points), got {self.tolerance}")
        if not self.metrics:
            raise ConfigError(f"{where}.metrics: must not be empty")
        for i, r in enumerate(self.rows):
            if isinstance(r, dict):
                self.rows[i] = from_dict(TableRow, r, f"{where}.rows[{i}]")
            elif not isinstance(r, (str, TableRow)):
                raise ConfigError(f"{where}.rows[{i}]: a published id (or glob) or a mapping with 'ref', got {r!r}")

    def row_specs(self) -> list[TableRow]:
        return [TableRow(ref=r) if isinstance(r, str) else r for r in self.rows]


def available_tables() -> list[str]:
    return sorted(p.stem for p in tables_dir().glob("*.yaml"))


def load_table(name_or_path: str | Path) -> TableSpec:
    """Schema-validated table definition, by name (tables/<name>.yaml) or path. Registry checks: `resolve_table`."""
    return load_named_yaml(TableSpec, name_or_path, tables_dir(), "table")


def _check_override_keys(overrides: dict[str, Any], method: str | None, where: str) -> None:
    """Static key check (values are checked by harness.config.resolve once the cell can be resolved)."""
    from harness.backbone import BackboneConfig

    for key in overrides:
        if key == "protocol":  # a preset names the protocol it reproduces (datasets/protocols/)
            continue
        if key in TOP_LEVEL_KEYS:
            raise ConfigError(f"{where}: {key!r} is set by the table's 'seeds' / 'order_seeds', not by an override")
        section, _, name = key.partition(".")
        if section == "train":
            valid = field_names(TrainConfig)
        elif section == "backbone":
            valid = field_names(BackboneConfig)
        elif section == "method":
            if method is None:
                continue  # checked per row, against the method's own Params
            from harness.registry import get_method, method_names

            if method not in method_names():
                continue  # planned: its Params do not exist yet
            valid = field_names(get_method(method).Params)
        else:
            raise ConfigError(f"{where}: unknown key {key!r}; keys start with train., backbone. or method.")
        if name not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}; valid {section} keys: {', '.join(valid)}")


@dataclass
class Entry:
    """One line of a resolved table: a published number (or none) and the clmerge cells meant to reproduce it."""

    label: str  # the method as the paper names it (grid tables: the clmerge name)
    method: str | None  # clmerge method, None when clmerge has no counterpart
    benchmark: str
    metric: str
    published: PublishedRow | None
    implemented: bool
    missing: str  # why not implemented ('' when implemented)
    same_protocol: bool
    cells: list[RunConfig]
    note: str = ""  # the table row's note (the published row's note is on `published`)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResolvedTable:
    spec: TableSpec
    entries: list[Entry]
    presets: dict[str, Preset]
    used_presets: list[str]

    def cells(self) -> list[RunConfig]:
        seen, out = set(), []
        for e in self.entries:
            for c in e.cells:
                if c.run_id() not in seen:
                    seen.add(c.run_id())
                    out.append(c)
        return out


def _seed_list(seeds: int | list[int] | None, default: list[int]) -> list[int]:
    if seeds is None:
        return list(default)
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"--seeds: give a number of seeds >= 1, got {seeds}")
        return list(range(seeds))
    return list(seeds)


def resolve_table(
    table: str | Path | TableSpec,
    seeds: int | list[int] | None = None,
    published: dict[str, PublishedRow] | None = None,
    presets: dict[str, Preset] | None = None,
) -> ResolvedTable:
    """Validate a table against published.csv, the presets and the registries; resolve the cells of runnable rows.

    `seeds`: an int N (seeds 0..N-1) or a list, replacing the table's seeds.
    """
    spec = table if isinstance(table, TableSpec) else load_table(table)
    where = spec.file or spec.name
    presets = load_presets() if presets is None else presets
    if spec.grid is not None:
        return _resolve_grid_table(spec, seeds, presets)
    published = load_published() if published is None else published
    for key, ov in spec.benchmark_overrides.items():
        benchmark_status(key, f"{where}.benchmark_overrides", reference_only=False)
        _check_override_keys(ov, None, f"{where}.benchmark_overrides.{key}")
    for key, ov in spec.method_overrides.items():
        method_status(key, f"{where}.method_overrides")
        _check_override_keys(ov, key, f"{where}.method_overrides.{key}")
    _check_override_keys(spec.overrides, None, f"{where}.overrides")
    seed_list = _seed_list(seeds, spec.seeds)
    entries: list[Entry] = []
    used_presets: list[str] = []
    seen_refs: set[str] = set()
    for i, row in enumerate(spec.row_specs()):
        w = f"{where}.rows[{i}]"
        ids = [k for k in published if fnmatch.fnmatchcase(k, row.ref)] if any(c in row.ref for c in "*?[") else [row.ref]
        if not ids:
            raise ConfigError(f"{w}: ref {row.ref!r} matches no id in published.csv")
        preset_name = row.preset or spec.preset
        if preset_name is not None and preset_name not in presets:
            raise unknown("preset", preset_name, list(presets), w)
        if preset_name is not None and preset_name not in used_presets:
            used_presets.append(preset_name)
        for ref in ids:
            if ref not in published:
                raise unknown("published id", ref, list(published)[:20] + ["…"], w)
            if ref in seen_refs:
                raise ConfigError(f"{w}: published row {ref!r} is already in this table")
            seen_refs.add(ref)
            pub = published[ref]
            check_published([pub], f"{w} → published.csv")
            entries.append(_entry(spec, row, pub, preset_name, presets, seed_list, w))
    return ResolvedTable(spec, entries, presets, used_presets)


def _entry(spec: TableSpec, row: TableRow, pub: PublishedRow, preset_name: str | None, presets: dict[str, Preset],
           seeds: list[int], where: str) -> Entry:
    method = row.method if row.method is not None else pub.counterpart()
    bench = row.benchmark or pub.benchmark
    missing = ""
    if method is None:
        missing = f"clmerge has no counterpart of {pub.method_as_published!r}"
    elif method_status(method, f"{where}.method") == "planned":
        missing = f"method {method!r} is planned, not written yet"
    bstat = benchmark_status(bench, f"{where}.benchmark")
    if not missing and bstat != "available":
        missing = f"benchmark {bench!r} is {'planned, not written yet' if bstat == 'planned' else 'not planned'}"
    overrides = {
        **(presets[preset_name].overrides if preset_name else {}),
        **spec.overrides,
        **spec.benchmark_overrides.get(bench, {}),
        **(spec.method_overrides.get(method, {}) if method else {}),
        **row.overrides,
    }
    _check_override_keys(row.overrides, method, f"{where}.overrides")
    if method is not None:
        _check_override_keys(overrides, method, f"{where} (merged overrides)")
    cells: list[RunConfig] = []
    if not missing:
        seen = set()
        for order_seed in spec.order_seeds:
            for seed in seeds:
                cfg = resolve(bench, method, seed, order_seed, overrides, where=f"{where} ({bench} × {method})")
                if cfg.run_id() not in seen:
                    seen.add(cfg.run_id())
                    cells.append(cfg)
    protocol = row.protocol or spec.protocol
    return Entry(label=pub.method_as_published, method=method, benchmark=bench, metric=pub.metric, published=pub,
                 implemented=not missing, missing=missing, same_protocol=protocol == "same", cells=cells,
                 note=row.note, overrides=overrides)


def _resolve_grid_table(spec: TableSpec, seeds: int | list[int] | None, presets: dict[str, Preset]) -> ResolvedTable:
    from harness.grid import expand, load_grid

    grid = load_grid(spec.grid)  # type: ignore[arg-type]
    if seeds is not None:
        grid.seeds = _seed_list(seeds, grid.seeds)
    cells = expand(grid)
    groups: dict[tuple[str, str], list[RunConfig]] = {}
    for c in cells:
        groups.setdefault((c.benchmark, c.method), []).append(c)
    entries = [
        Entry(label=method, method=method, benchmark=bench, metric=metric, published=None, implemented=True, missing="",
              same_protocol=True, cells=group)
        for (bench, method), group in groups.items()
        for metric in spec.metrics
    ]
    return ResolvedTable(spec, entries, presets, [])


def validate_all() -> list[str]:
    """Resolve every shipped table and check every published row; return the table names (ConfigError on a problem)."""
    check_published(load_published())
    names = available_tables()
    for name in names:
        resolve_table(name)
    return names


# --------------------------------------------------------------------------------------------------------------------
# API for the CLI


def list_tables(validate: bool = False) -> list[tuple[str, str]]:
    """(name, description) of every table in results/reference/tables/. `validate`: also check registries (slower)."""
    out = []
    for name in available_tables():
        spec = resolve_table(name).spec if validate else load_table(name)
        out.append((spec.name, spec.description))
    return out


def table_cells(name: str, seeds: int | list[int] | None = None) -> list[RunConfig]:
    """The RunConfigs of a table's runnable rows (method registered and benchmark available), without duplicates."""
    return resolve_table(name, seeds).cells()


# --------------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Line:
    """An entry with our numbers and its verdict (all in %)."""

    entry: Entry
    n: int
    total: int
    mean: float
    std: float
    delta: float
    verdict: str
    bound: float
    results: list[dict]


def _load_results(cells: list[RunConfig], root: Path) -> dict[str, dict]:
    from harness.store import load_result

    out = {}
    for c in cells:
        r = load_result(c, root)
        if r is not None:
            out[c.run_id()] = r
    return out


def summarize(resolved: ResolvedTable, root: Path | None = None) -> list[Line]:
    """Our mean ± std (ddof = 1) per entry from the finished runs under `root`, Δ and the verdict."""
    import numpy as np

    root = Path(root or results_dir())
    results = _load_results(resolved.cells(), root)
    lines = []
    for e in resolved.entries:
        done = [results[c.run_id()] for c in e.cells
                if c.run_id() in results and results[c.run_id()].get("metrics", {}).get(e.metric) is not None]
        vals = np.array([100.0 * float(r["metrics"][e.metric]) for r in done], dtype=float)
        mean, std = mean_std(vals)
        pub = e.published
        pv = pub.value if pub else None
        ps = pub.std if pub else None
        delta = mean - pv if (pv is not None and len(vals)) else math.nan
        v = verdict(mean if len(vals) else None, std, len(vals), pv, ps, implemented=e.implemented,
                    same_protocol=e.same_protocol, tolerance=resolved.spec.tolerance)
        lines.append(Line(e, len(vals), len(e.cells), mean, std, delta, v,
                          bound_of(std, len(vals), ps, resolved.spec.tolerance), done))
    return lines


# --------------------------------------------------------------------------------------------------------------------
# Rendering


def _ours_text(line: Line, pm: str = " ± ") -> str:
    if not line.entry.implemented or line.n == 0:
        return "–"
    n = f"{line.n}" if line.n == line.total else f"{line.n}/{line.total}"
    return f"{line.mean:.2f}" + (f"{pm}{line.std:.2f}" if _finite(line.std) else "") + f" ({n})"


def _pub_text(line: Line, pm: str = " ± ") -> str:
    p = line.entry.published
    if p is None:
        return "–"
    return p.value_text + (f"{pm}{p.std_text}" if p.std_text else "")


def _delta_text(line: Line) -> str:
    return f"{line.delta:+.2f}" if _finite(line.delta) else "–"


def _grouped(lines: list[Line]) -> list[Line]:
    """Lines grouped by benchmark (in order of first appearance), keeping the table's order within a benchmark."""
    order: dict[str, int] = {}
    for ln in lines:
        order.setdefault(ln.entry.benchmark, len(order))
    return sorted(lines, key=lambda ln: order[ln.entry.benchmark])  # stable


def _notes(lines: list[Line]) -> tuple[dict[int, list[int]], list[str]]:
    """Footnote numbers per line (by id) and the distinct note texts (published notes split at NOTE_SEPARATOR)."""
    texts: list[str] = []
    refs: dict[int, list[int]] = {}
    for ln in lines:
        parts = []
        if ln.entry.published and ln.entry.published.note:
            parts += [p.strip() for p in ln.entry.published.note.split(NOTE_SEPARATOR) if p.strip()]
        if ln.entry.note:
            parts.append(ln.entry.note)
        if ln.entry.missing:
            parts.append(ln.entry.missing)
        nums = []
        for p in parts:
            if p not in texts:
                texts.append(p)
            nums.append(texts.index(p) + 1)
        refs[id(ln)] = sorted(set(nums))
    return refs, texts


def _env_summary(lines: list[Line]) -> dict[str, Any]:
    """What the finished runs' result.json files say about where they ran."""
    runs: dict[str, dict] = {}
    for ln in lines:
        for r in ln.results:
            runs[r["run_id"]] = r
    packages: dict[str, set] = {}
    devices, pythons, commits, seeds = set(), set(), set(), set()
    splits: dict[str, set] = {}
    for r in runs.values():
        env = r.get("env", {})
        for k, v in (env.get("packages") or {}).items():
            packages.setdefault(k, set()).add(str(v))
        devices.add(str(env.get("device")))
        pythons.add(str(env.get("python")))
        commits.add(str(env.get("git_commit")))
        cfg = r.get("config", {})
        seeds.add(cfg.get("seed"))
        stream = r.get("stream", {})
        key = cfg.get("benchmark", "?") + (f" (order seed {stream.get('order_seed')})" if stream.get("order_seed") is not None else "")
        splits.setdefault(key, set()).add(str(stream.get("split_hash", "?"))[:12])
    return {
        "runs": len(runs),
        "packages": {k: sorted(v) for k, v in sorted(packages.items())},
        "devices": sorted(devices),
        "python": sorted(pythons),
        "git_commits": sorted(commits),
        "seeds": sorted(s for s in seeds if s is not None),
        "split_hashes": {k: sorted(v) for k, v in sorted(splits.items())},
    }


def _env_lines(env: dict[str, Any]) -> list[str]:
    if not env["runs"]:
        return ["no finished runs"]
    pk = ", ".join(f"{k} {'/'.join(v)}" + (" (MIXED)" if len(v) > 1 else "") for k, v in env["packages"].items())
    splits = "; ".join(f"{k}: {', '.join(v)}" + (" (MIXED)" if len(v) > 1 else "") for k, v in env["split_hashes"].items())
    return [
        f"finished runs: {env['runs']}",
        f"packages: {pk}",
        f"device (GPU): {', '.join(env['devices'])}",
        f"python: {', '.join(env['python'])}; git commit: {', '.join(env['git_commits'])}",
        f"seeds: {', '.join(map(str, env['seeds']))}",
        f"split hashes: {splits}",
    ]


def _protocol_lines(resolved: ResolvedTable) -> list[str]:
    spec = resolved.spec
    out = []
    for name in resolved.used_presets:
        p = resolved.presets[name]
        out.append(f"preset `{name}`: {p.description}" + (f" Not expressible in clmerge: {p.not_expressible}" if p.not_expressible else ""))
    if spec.overrides:
        out.append(f"overrides: {spec.overrides}")
    for b, ov in spec.benchmark_overrides.items():
        out.append(f"{b}: {ov}")
    for m, ov in spec.method_overrides.items():
        out.append(f"{m}: {ov}")
    return out


def _counts(lines: list[Line]) -> str:
    c: dict[str, int] = {}
    for ln in lines:
        c[ln.verdict] = c.get(ln.verdict, 0) + 1
    return " · ".join(f"{v} {c[v]}" for v in VERDICTS if v in c)


def _md(text: str) -> str:
    """A Markdown table cell: '|' escaped."""
    return str(text).replace("|", "\\|")


def _wide(lines: list[Line], metrics: list[str]) -> list[tuple[Entry, dict[str, Line]]]:
    """Grid tables: one item per (benchmark, method) with its line per metric."""
    out: dict[tuple[str, str], tuple[Entry, dict[str, Line]]] = {}
    for ln in lines:
        key = (ln.entry.benchmark, ln.entry.label)
        out.setdefault(key, (ln.entry, {}))[1][ln.entry.metric] = ln
    return list(out.values())


def _status(ln: Line) -> str:
    return NOT_RUN if ln.n == 0 else ("done" if ln.n == ln.total else "partial")


def _mean_text(ln: Line | None, pm: str = " ± ") -> str:
    if ln is None or ln.n == 0:
        return "–"
    return f"{ln.mean:.2f}" + (f"{pm}{ln.std:.2f}" if _finite(ln.std) else "")


def render_markdown(resolved: ResolvedTable, lines: list[Line], env: dict[str, Any]) -> str:
    spec = resolved.spec
    if spec.grid is not None:
        return _render_grid_markdown(resolved, lines, env)
    refs, notes = _notes(lines)
    cells = resolved.cells()
    finished = len({r["run_id"] for ln in lines for r in ln.results})
    out = [f"### {spec.name}: {spec.title or spec.description}", ""]
    if spec.source:
        out.append(f"Published: {spec.source}.  ")
    out.append(f"{finished} of {len(cells)} clmerge cells finished; tolerance {spec.tolerance:.2f} pp.")
    if spec.protocol == "differs":
        out += ["", f"**Protocol differs — indicative only.** {spec.protocol_note}".rstrip()]
    out += ["", "| benchmark | method | clmerge | metric | ours (n) | published | Δ | verdict | notes |",
            "|---|---|---|---|---|---|---|---|---|"]
    for ln in _grouped(lines):
        e = ln.entry
        note = ", ".join(str(k) for k in refs[id(ln)])
        out.append(f"| {_md(e.benchmark)} | {_md(e.label)} | {e.method or '–'} | {METRICS[e.metric]} | {_ours_text(ln)} | "
                   f"{_pub_text(ln)} | {_delta_text(ln)} | {ln.verdict} | {note} |")
    out += ["", f"**Verdicts:** {_counts(lines)}.", "",
            f"**Rule** (tolerance {spec.tolerance:.2f} percentage points): {VERDICT_RULE}", "",
            "Ours: mean ± std (ddof = 1) over the n finished seeds (n/N when some of N are missing), in %. Published values "
            "as printed, with the paper's std where it gives one; provenance per number in results/reference/published.csv."]
    proto = _protocol_lines(resolved)
    if proto:
        out += ["", "**Protocol of the clmerge cells**", ""] + [f"- {p}" for p in proto]
    if notes:
        out += ["", "**Notes**", ""] + [f"{i}. {t}" for i, t in enumerate(notes, 1)]
    out += ["", "**Environment** (from the finished runs' result.json)", ""] + [f"- {x}" for x in _env_lines(env)]
    return "\n".join(out) + "\n"


def _render_grid_markdown(resolved: ResolvedTable, lines: list[Line], env: dict[str, Any]) -> str:
    spec = resolved.spec
    metrics = list(spec.metrics)
    finished = len({r["run_id"] for ln in lines for r in ln.results})
    out = [f"### {spec.name}: {spec.title or spec.description}", "",
           f"Cells of grids/{spec.grid}.yaml; no published numbers. {finished} of {len(resolved.cells())} cells finished.", "",
           "| benchmark | method | " + " | ".join(METRICS[m] for m in metrics) + " | n | status |",
           "|---|---|" + "---|" * (len(metrics) + 2)]
    for entry, by_metric in _wide(lines, metrics):
        first = by_metric[metrics[0]]
        n = f"{first.n}" if first.n == first.total else f"{first.n}/{first.total}"
        out.append(f"| {_md(entry.benchmark)} | {_md(entry.label)} | " + " | ".join(_mean_text(by_metric.get(m)) for m in metrics)
                   + f" | {n} | {_status(first)} |")
    out += ["", "Mean ± std (ddof = 1) over the n finished seeds, in %. A_last: accuracy on all seen classes after the last "
            "task (sample-weighted); A_avg: mean of that accuracy after each task; Forgetting: mean over old tasks of "
            "best-ever minus final accuracy."]
    out += ["", "**Environment** (from the finished runs' result.json)", ""] + [f"- {x}" for x in _env_lines(env)]
    return "\n".join(out) + "\n"


CSV_COLUMNS = ["table", "benchmark", "method_as_published", "method", "metric", "ours_mean", "ours_std", "n", "cells",
               "published", "published_std", "delta", "bound", "verdict", "tolerance", "same_protocol", "provenance",
               "ref", "missing", "note", "run_ids"]


def render_csv(resolved: ResolvedTable, lines: list[Line]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    fmt = lambda x: "" if not _finite(x) else f"{x:.4f}"  # noqa: E731
    for ln in _grouped(lines):
        e, p = ln.entry, ln.entry.published
        w.writerow({
            "table": resolved.spec.name, "benchmark": e.benchmark, "method_as_published": e.label, "method": e.method or "",
            "metric": e.metric, "ours_mean": fmt(ln.mean), "ours_std": fmt(ln.std), "n": ln.n, "cells": ln.total,
            "published": p.value_text if p else "", "published_std": (p.std_text or "") if p else "",
            "delta": fmt(ln.delta), "bound": fmt(ln.bound) if p else "", "verdict": ln.verdict,
            "tolerance": resolved.spec.tolerance, "same_protocol": e.same_protocol,
            "provenance": p.provenance if p else "", "ref": p.id if p else "", "missing": e.missing,
            "note": NOTE_SEPARATOR.join(x for x in ((p.note if p else ""), e.note) if x),
            "run_ids": " ".join(c.run_id() for c in e.cells),
        })
    return buf.getvalue()


_TEX_MAP = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "±": r"$\pm$", "−": r"$-$", "–": "--", "—": "---", "→": r"$\rightarrow$", "×": r"$\times$", "α": r"$\alpha$",
    "Δ": r"$\Delta$", "σ": r"$\sigma$", "≤": r"$\leq$", "≥": r"$\geq$", "§": r"\S{}", "√": r"$\surd$", "²": r"$^2$",
}


TEX_METRICS = {"a_last": r"$A_\mathrm{last}$", "a_avg": r"$A_\mathrm{avg}$", "forgetting": "Forgetting"}


def tex_escape(text: str) -> str:
    """Plain text → LaTeX (special characters escaped, a few Unicode symbols as math)."""
    return "".join(_TEX_MAP.get(ch, ch) for ch in str(text))


def render_latex(resolved: ResolvedTable, lines: list[Line], env: dict[str, Any]) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); provenance, rule and environment as comments."""
    spec = resolved.spec
    comment = lambda s: "% " + str(s).replace("\n", " ")  # noqa: E731
    out = [comment(f"clmerge leaderboard table '{spec.name}' (harness/leaderboard.py). Requires \\usepackage{{booktabs}}."),
           comment(f"Published: {spec.source}")]
    if spec.grid is None:
        out.append(comment(f"Rule (tolerance {spec.tolerance:.2f} pp): {VERDICT_RULE}"))
    out += [comment(x) for x in _env_lines(env)]
    if spec.grid is not None:
        return _render_grid_latex(resolved, lines, env, out)
    caption = spec.title or spec.description
    if spec.protocol == "differs" and "indicative" not in caption:
        caption += ". Protocol differs from the published one: indicative only"
    out += [r"\begin{table}[t]", r"\centering", r"\small",
            rf"\caption{{{tex_escape(caption)}. Ours: mean $\pm$ std (n seeds); reproduced if $|\Delta| \leq "
            rf"\max({spec.tolerance:.2f}, 2\sigma)$.}}",
            rf"\label{{tab:clmerge-{spec.name}}}",
            r"\begin{tabular}{lllrrrl}", r"\toprule",
            r"Benchmark & Method & Metric & Ours & Published & $\Delta$ & Verdict \\", r"\midrule"]
    previous = None
    for ln in _grouped(lines):
        e = ln.entry
        if previous is not None and e.benchmark != previous:
            out.append(r"\midrule")
        previous = e.benchmark
        ours = tex_escape(_ours_text(ln, pm=" ± "))
        delta = f"${ln.delta:+.2f}$" if _finite(ln.delta) else "--"
        out.append(" & ".join([tex_escape(e.benchmark), tex_escape(e.label), TEX_METRICS[e.metric], ours,
                               tex_escape(_pub_text(ln)), delta, tex_escape(ln.verdict)]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def _render_grid_latex(resolved: ResolvedTable, lines: list[Line], env: dict[str, Any], head: list[str]) -> str:
    spec = resolved.spec
    metrics = list(spec.metrics)
    out = head + [r"\begin{table}[t]", r"\centering", r"\small",
                  rf"\caption{{{tex_escape(spec.title or spec.description)}. Mean $\pm$ std over n seeds.}}",
                  rf"\label{{tab:clmerge-{spec.name}}}",
                  r"\begin{tabular}{ll" + "r" * len(metrics) + "r}", r"\toprule",
                  "Benchmark & Method & " + " & ".join(TEX_METRICS[m] for m in metrics) + r" & n \\", r"\midrule"]
    for entry, by_metric in _wide(lines, metrics):
        first = by_metric[metrics[0]]
        n = f"{first.n}" if first.n == first.total else f"{first.n}/{first.total}"
        cells = [tex_escape(_mean_text(by_metric.get(m))) for m in metrics]
        out.append(" & ".join([tex_escape(entry.benchmark), tex_escape(entry.label), *cells, n]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Plots


def _savefig(fig, path: Path) -> None:
    atomic_savefig(fig, path, dpi=110)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_vs_published(resolved: ResolvedTable, lines: list[Line], path: Path) -> bool:
    """Ours (mean, ±1 std error bars) next to published (± its std) per benchmark and metric. False: nothing to plot."""
    import numpy as np

    panels: dict[tuple[str, str], list[Line]] = {}
    for ln in _grouped(lines):
        if ln.n or ln.entry.published is not None:
            panels.setdefault((ln.entry.benchmark, ln.entry.metric), []).append(ln)
    if not panels:
        return False
    plt = _pyplot()
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, ((bench, metric), group) in zip(axes.flat, panels.items()):
        x = np.arange(len(group))
        w = 0.38
        ours = [ln.mean if ln.n else np.nan for ln in group]
        ours_err = [ln.std if _finite(ln.std) else 0.0 for ln in group]
        pub = [ln.entry.published.value if ln.entry.published else np.nan for ln in group]
        pub_err = [(ln.entry.published.std or 0.0) if ln.entry.published else 0.0 for ln in group]
        if any(ln.n for ln in group):
            ax.bar(x - w / 2, ours, w, yerr=ours_err, capsize=3, label="ours (clmerge)", color="tab:blue")
        if any(ln.entry.published is not None for ln in group):
            ax.bar(x + w / 2, pub, w, yerr=pub_err, capsize=3, label="published", color="tab:gray")
        for xi, ln in zip(x, group):
            if ln.verdict in (NO_IMPLEMENTATION, NOT_RUN):
                ax.annotate(ln.verdict, (xi - w / 2, 1), rotation=90, fontsize=6, ha="center", va="bottom", color="tab:red")
        ax.set_xticks(x)
        ax.set_xticklabels([ln.entry.label for ln in group], rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{bench} · {METRICS[metric]}", fontsize=9)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{resolved.spec.name}: ours vs published")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return True


def plot_curves(resolved: ResolvedTable, lines: list[Line], path: Path) -> bool:
    """Accuracy after each task per table row (mean line, ±1 std band), via harness.report.plot. False: no runs."""
    import pandas as pd

    from harness.report import plot

    rows, seen = [], set()
    for ln in lines:
        for r in ln.results:
            key = (ln.entry.benchmark, ln.entry.label, r["run_id"])
            if key not in seen:
                seen.add(key)
                rows.append({"benchmark": ln.entry.benchmark, "method": ln.entry.label, "done": True,
                             "acc_curve": r["metrics"]["acc_curve"]})
    if not rows:
        return False
    plot(pd.DataFrame(rows), path, f"{resolved.spec.name}: accuracy on all seen classes after each task")
    return True


def plot_acc_matrix(result: dict, path: Path, title: str = "") -> None:
    """Heatmap of a run's accuracy matrix R[t][j] (accuracy on task j after training task t), in %."""
    import numpy as np

    acc = result["acc_matrix"]
    T = len(acc)
    M = np.full((T, T), np.nan)
    for t, row in enumerate(acc):
        for j, v in enumerate(row):
            if v is not None:
                M[t, j] = 100.0 * float(v)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * T, 0.8 + 0.5 * T))
    im = ax.imshow(M, vmin=0, vmax=100, cmap="viridis")
    if T <= 12:
        for t in range(T):
            for j in range(T):
                if not np.isnan(M[t, j]):
                    ax.text(j, t, f"{M[t, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if M[t, j] < 60 else "black")
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training task t")
    ax.set_xticks(range(T))
    ax.set_yticks(range(T))
    ax.set_title(title or result.get("run_id", ""), fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


# --------------------------------------------------------------------------------------------------------------------
# The report


def write_report(name: str | Path | TableSpec, root: Path | None = None, seeds: int | list[int] | None = None,
                 plots: bool = True) -> tuple[str, dict[str, Path]]:
    """Markdown, CSV and LaTeX under <root>/tables/, plots under <root>/plots/; return (markdown, {kind: path}).

    Path keys: markdown, csv, latex, and when there is something to draw: plot_vs_published, plot_curves and one
    `matrix:<benchmark>:<method>` heatmap per table method (its lowest-seed finished run).
    """
    root = Path(root or results_dir())
    resolved = resolve_table(name, seeds)
    lines = summarize(resolved, root)
    env = _env_summary(lines)
    tname = resolved.spec.name
    md = render_markdown(resolved, lines, env)
    paths: dict[str, Path] = {
        "markdown": root / "tables" / f"{tname}.md",
        "csv": root / "tables" / f"{tname}.csv",
        "latex": root / "tables" / f"{tname}.tex",
    }
    atomic_write_text(paths["markdown"], md)
    atomic_write_text(paths["csv"], render_csv(resolved, lines))
    atomic_write_text(paths["latex"], render_latex(resolved, lines, env))
    if plots:
        p = root / "plots" / f"{tname}-vs-published.png"
        if plot_vs_published(resolved, lines, p):
            paths["plot_vs_published"] = p
        p = root / "plots" / f"{tname}-curves.png"
        if plot_curves(resolved, lines, p):
            paths["plot_curves"] = p
        drawn = set()
        for ln in lines:
            key = (ln.entry.benchmark, ln.entry.label)
            if not ln.results or key in drawn:
                continue
            drawn.add(key)
            first = min(ln.results, key=lambda r: (r["config"].get("seed", 0), r["run_id"]))
            p = root / "plots" / tname / f"matrix-{_slug(key[0])}-{_slug(key[1])}.png"
            plot_acc_matrix(first, p, f"{key[0]} · {key[1]}\nseed {first['config'].get('seed')} · run {first['run_id'][:8]}")
            paths[f"matrix:{key[0]}:{key[1]}"] = p
    return md, paths
