"""The leaderboard: our numbers for a published table's rows, their verdicts, and the report files.

    harness/report/tables.py        published numbers, presets and table definitions as data; resolved to cells
    harness/report/verdicts.py      the verdict rule (pure)
    harness/report/leaderboard.py   this: finished results per row (checked against their cells), verdicts, `write_report`
    harness/report/table_render.py  Markdown, CSV and LaTeX
    harness/report/table_plots.py   Δ per row, accuracy curves, accuracy-matrix heatmaps

Outputs (`write_report`): `<results>/tables/<name>.md|.csv|.tex` and `<results>/plots/<name>-delta.png`,
`<name>-curves.png`, `<name>/matrix-*.png`. Values are in % (clmerge stores fractions); ours = mean ± sample std
(ddof = 1) over the finished seeds, as harness/report/grid_report.py.

A row's status, before any comparison: **failed** when one of its cells recorded an error (first line of it shown,
with the `clmerge status` command), **not run** when none finished, **partial (k/n)** when fewer seeds finished than
the table asks (shown, no verdict). A result.json whose run_id or config does not match the cell it would be counted
for is reported and not counted.

API for the CLI: `list_tables()`, `table_cells(name, seeds=None)`, `write_report(name, root=None, seeds=None)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.core.io import atomic_write_text, read_json
from harness.core.paths import results_dir
from harness.math.metrics import mean_std
from harness.store import RESULT, is_complete, result_mismatch, run_dir

# The data side, re-exported: callers (CLI, tests, other modules) import these from here.
from harness.report.tables import (  # noqa: F401
    Line,
    METRICS,
    NOTE_SEPARATOR,
    PLANNED_BENCHMARKS,
    PLANNED_METHODS,
    PUBLISHED_COLUMNS,
    REFERENCE_ONLY_BENCHMARKS,
    Entry,
    Preset,
    PublishedRow,
    ResolvedTable,
    TableRow,
    TableSpec,
    available_tables,
    benchmark_status,
    check_published,
    list_tables,
    load_presets,
    load_published,
    load_table,
    method_status,
    published_seed_count,
    reference_dir,
    resolve_table,
    table_cells,
    tables_dir,
    validate_all,
)
from harness.report.verdicts import (  # noqa: F401
    CONFLICT,
    DEFAULT_TOLERANCE,
    DIFFERS,
    FAILED,
    NO_IMPLEMENTATION,
    NO_REFERENCE,
    NOT_RUN,
    PARTIAL,
    PROTOCOL_DIFFERS,
    REPRODUCED,
    VERDICT_RULE,
    VERDICTS,
    bound_of,
    verdict,
)

@dataclass
class CellResults:
    """What the run directories of a set of cells hold: results that match their cell, failures, mismatches."""

    results: dict[str, dict] = field(default_factory=dict)  # run_id → result.json
    failed: dict[str, str] = field(default_factory=dict)  # run_id → first line of the recorded error
    mismatched: dict[str, str] = field(default_factory=dict)  # run_id → why its result.json is not counted


def load_cell_results(cells: list[RunConfig], root: Path) -> CellResults:
    """Finished results of `cells` under `root`, each checked against its cell: a result.json whose `run_id` or whose
    stored `config` (rehashed) is not the cell's is listed in `mismatched` and not counted. Cells without a result
    whose run recorded an error (error.json) are listed in `failed` with the error's first line."""
    out = CellResults()
    for c in cells:
        rid, d = c.run_id(), run_dir(c, root)
        if is_complete(d):
            why = result_mismatch(d, rid)
            if why:
                out.mismatched[rid] = why + " (the next run of the cell replaces it)"
            else:
                out.results[rid] = read_json(d / RESULT)
            continue
        err = d / "error.json"
        if err.exists():
            try:
                message = str(read_json(err).get("error", "")).strip()
            except (ValueError, OSError):
                message = "error.json unreadable"
            out.failed[rid] = (message.splitlines() or ["(no message)"])[0]
    return out


def summarize(resolved: ResolvedTable, root: Path | None = None) -> list[Line]:
    """Our mean ± std (ddof = 1) per entry from the finished, matching runs under `root`; Δ, bound and verdict."""
    import numpy as np

    root = Path(root or results_dir())
    found = load_cell_results(resolved.cells(), root)
    lines = []
    tol = resolved.spec.tolerance
    for e in resolved.entries:
        done = [found.results[c.run_id()] for c in e.cells
                if c.run_id() in found.results and found.results[c.run_id()].get("metrics", {}).get(e.metric) is not None]
        vals = np.array([100.0 * float(r["metrics"][e.metric]) for r in done], dtype=float)
        mean, std = mean_std(vals)
        pub = e.published
        pv, ps = (pub.value, pub.std) if pub else (None, None)
        n_pub = published_seed_count(pub.seeds) if pub else None
        n = len(vals)
        delta = mean - pv if (pv is not None and n) else math.nan
        v = verdict(mean if n else None, std, n, pv, ps, n_published=n_pub, implemented=e.implemented,
                    same_protocol=e.same_protocol, tolerance=tol)
        failed = [(c, found.failed[c.run_id()]) for c in e.cells if c.run_id() in found.failed]
        if e.implemented:
            if failed:
                v = FAILED
            elif 0 < n < len(e.cells):
                v = PARTIAL
            elif n and e.conflict and v in (REPRODUCED, DIFFERS):
                v = CONFLICT
        lines.append(Line(e, n, len(e.cells), mean, std, delta, v, bound_of(std, n, ps, tol, n_published=n_pub), done,
                          failed, [found.mismatched[c.run_id()] for c in e.cells if c.run_id() in found.mismatched],
                          n_pub))
    return lines


def env_summary(lines: list[Line]) -> dict[str, Any]:
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


def write_report(name: str | Path | TableSpec, root: Path | None = None, seeds: int | list[int] | None = None,
                 plots: bool = True, command: str = "") -> tuple[str, dict[str, Path]]:
    """Markdown, CSV and LaTeX under <root>/tables/, plots under <root>/plots/; return (markdown, {kind: path}).

    Path keys: markdown, csv, latex, and when there is something to draw: plot_delta (Δ per row against its bound),
    plot_curves, heatmap (grid tables: mean per benchmark × method) and one `matrix:<benchmark>:<method>` heatmap per
    table method (its lowest-seed finished run). `command`: the `clmerge status …` command named for failed cells.
    """
    from harness.report import table_plots
    from harness.report import table_render

    root = Path(root or results_dir())
    resolved = resolve_table(name, seeds)
    lines = summarize(resolved, root)
    env = env_summary(lines)
    tname = resolved.spec.name
    status_cmd = command or f"clmerge status {tname}"
    md = table_render.render_markdown(resolved, lines, env, status_cmd)
    paths: dict[str, Path] = {
        "markdown": root / "tables" / f"{tname}.md",
        "csv": root / "tables" / f"{tname}.csv",
        "latex": root / "tables" / f"{tname}.tex",
    }
    atomic_write_text(paths["markdown"], md)
    atomic_write_text(paths["csv"], table_render.render_csv(resolved, lines))
    atomic_write_text(paths["latex"], table_render.render_latex(resolved, lines, env))
    if plots:
        paths.update(table_plots.draw_all(resolved, lines, root / "plots"))
    return md, paths
