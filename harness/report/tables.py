"""Published tables as data: published numbers (published.csv), protocol presets and table definitions
(tables/*.yaml), validated against the method and benchmark registries and resolved to the clmerge cells that
reproduce each row.

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
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.config import TOP_LEVEL_KEYS, RunConfig, TrainConfig, check_seed
from harness.core.errors import ConfigError, unknown
from harness.core.paths import project_root
from harness.core.schema import field_names, from_dict, load_named_yaml, load_yaml
from harness.report.verdicts import DEFAULT_TOLERANCE, FAILED, PARTIAL
from harness.resolve import resolve

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
# Name status against the registries


def method_status(name: str, where: str = "") -> str:
    """'registered' or 'planned'; ConfigError (a typo) otherwise."""
    from harness.method.registry import method_names

    names = method_names()
    if name in names:
        return "registered"
    if name in PLANNED_METHODS:
        return "planned"
    raise unknown("method", name, sorted(set(names) | set(PLANNED_METHODS)), where)


def benchmark_status(name: str, where: str = "", reference_only: bool = True) -> str:
    """'available', 'planned' or 'reference-only'; ConfigError (a typo) otherwise."""
    from harness.data.spec import available_benchmarks

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
    """published.csv → {id: PublishedRow}, in file order. Checks columns, types, ranges and unique ids (not registries).

    Read as text (pandas, every cell a string) so the values keep the decimals the source printed."""
    import pandas as pd

    path = Path(path or reference_dir() / "published.csv")
    if not path.exists():
        raise ConfigError(f"published numbers not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    if list(frame.columns) != PUBLISHED_COLUMNS:
        raise ConfigError(f"{path}: columns must be {', '.join(PUBLISHED_COLUMNS)}; got {', '.join(frame.columns)}")
    duplicated = frame["id"][frame["id"].duplicated()]
    if len(duplicated):
        line = int(duplicated.index[0]) + 2  # header is line 1
        raise ConfigError(f"{path}:{line}: duplicate id {duplicated.iloc[0]!r}")
    out: dict[str, PublishedRow] = {}
    for index, raw in frame.iterrows():
        where = f"{path}:{int(index) + 2}"
        data: dict[str, Any] = {k: v.strip() for k, v in raw.items()}
        value_text, std_text = data["value"], data["std"]
        data["value"] = _num(value_text, f"{where}.value", optional=False)
        data["std"] = _num(std_text, f"{where}.std", optional=True)
        row = from_dict(PublishedRow, data, where)
        row._value_text = value_text  # type: ignore[attr-defined]
        if row.std is not None:
            row._std_text = "0" + std_text if std_text.startswith(".") else std_text  # type: ignore[attr-defined]
        out[row.id] = row
    return out


def published_seed_count(seeds: str) -> int | None:
    """The number of seeds a published row states (`seeds` column starting with a count: "3", "5 seeds",
    "1 (log run 1 of 2 …)"), or None when the source does not state one ("not reported", "not in the notes")."""
    m = re.match(r"\s*(\d+)\b", seeds)
    return int(m.group(1)) if m and int(m.group(1)) >= 1 else None


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
    conflict: str = ""  # the source contradicts itself for these cells (e.g. two numbers, one setting): no verdict


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
    # benchmark → how the published split differs from the one clmerge prepares by default (rows on it: protocol
    # differs, with the note), e.g. CUB's official split against the PILOT folder P&M most likely used
    split_differs: dict[str, str] = field(default_factory=dict)
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
        for i, seed in enumerate(self.seeds):
            check_seed(seed, f"{where}.seeds[{i}]")
        for i, seed in enumerate(self.order_seeds):
            check_seed(seed, f"{where}.order_seeds[{i}]", optional=True)
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
    """Static key check (values are checked by harness.resolve.resolve once the cell can be resolved)."""
    from harness.model.backbone import BackboneConfig

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
            from harness.method.registry import get_method, method_names

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
    conflict: str = ""  # the source is inconsistent for these cells: shown, no verdict (TableRow.conflict)
    reconstruction: str = ""  # what of the clmerge method is reconstructed (its class's `reconstruction`), '' if none


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
    for i, seed in enumerate(seeds):
        check_seed(seed, f"seeds[{i}]")
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
    for key in spec.split_differs:
        benchmark_status(key, f"{where}.split_differs", reference_only=False)
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
    note = row.note
    split = spec.split_differs.get(bench, "")
    if split:
        protocol = "differs"
        note = NOTE_SEPARATOR.join(x for x in (note, f"split differs: {split}") if x)
    return Entry(label=pub.method_as_published, method=method, benchmark=bench, metric=pub.metric, published=pub,
                 implemented=not missing, missing=missing, same_protocol=protocol == "same", cells=cells,
                 note=note, overrides=overrides, conflict=row.conflict,
                 reconstruction=reconstruction_of(method) if not missing else "")


def reconstruction_of(method: str | None) -> str:
    """What of a registered method is reconstructed (its class's `reconstruction`), '' for a method from public code."""
    if method is None:
        return ""
    from harness.method.registry import get_method, method_names

    return (get_method(method).reconstruction or "") if method in method_names() else ""


def _resolve_grid_table(spec: TableSpec, seeds: int | list[int] | None, presets: dict[str, Preset]) -> ResolvedTable:
    from harness.dispatch.grid import expand, load_grid

    grid = load_grid(spec.grid)  # type: ignore[arg-type]
    if seeds is not None:
        grid.seeds = _seed_list(seeds, grid.seeds)
    cells = expand(grid)
    groups: dict[tuple[str, str], list[RunConfig]] = {}
    for c in cells:
        groups.setdefault((c.benchmark, c.method), []).append(c)
    entries = [
        Entry(label=method, method=method, benchmark=bench, metric=metric, published=None, implemented=True, missing="",
              same_protocol=True, cells=group, reconstruction=reconstruction_of(method))
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


@dataclass
class Line:
    """An entry with our numbers and its verdict (all in %)."""

    entry: Entry
    n: int  # finished seeds counted
    total: int  # cells the table asks for
    mean: float
    std: float
    delta: float
    verdict: str
    bound: float
    results: list[dict]
    failed: list[tuple[RunConfig, str]] = field(default_factory=list)  # (cell, first line of its error)
    mismatched: list[str] = field(default_factory=list)  # why a result.json was not counted
    n_published: int | None = None

    @property
    def status(self) -> str:
        """The verdict as shown: 'partial (k/n)' with its counts, 'failed (k/n)' with the failed count."""
        if self.verdict == PARTIAL:
            return f"partial ({self.n}/{self.total})"
        if self.verdict == FAILED:
            return f"failed ({len(self.failed)}/{self.total})"
        return self.verdict
