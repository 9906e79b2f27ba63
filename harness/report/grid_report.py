"""Aggregate finished runs into tables (Markdown + CSV) and plots.

Metric shown: A_t is the sample-weighted accuracy over all seen test samples after task t (P&M/PILOT "Acc");
A_last = A_{T-1}; A_avg = mean_t A_t; forgetting (Chaudhry et al.) = mean over old tasks of the best accuracy before
the final task minus the final one; forgetting (mammoth/PILOT) takes the best including the final row (never < 0);
task-aware A_last scores each test sample with its own task's head only (a diagnostic). Values are mean ± sample
standard deviation (ddof = 1) over seeds; n is the number of finished seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.config import RunConfig
from harness.core.io import atomic_write_text
from harness.core.paths import results_dir
from harness.math.metrics import mean_std
from harness.report.table_plots import plot
from harness.store import load_result, result_stale_reason

COLUMNS = [("a_last", "A_last"), ("a_avg", "A_avg"), ("forgetting", "Forgetting (Chaudhry)"),
           ("forgetting_mammoth", "Forgetting (mammoth)"), ("task_aware_a_last", "Task-aware A_last")]
DEFINITION = (
    "A_t = accuracy over all seen test samples after task t (sample-weighted, as P&M/PILOT); A_last = A_T; "
    "A_avg = mean_t A_t; Forgetting (Chaudhry) = mean over old tasks of (best before the final task − final) accuracy, "
    "Forgetting (mammoth) = the same with the best over all rows, final included (mammoth/PILOT; never < 0); Task-aware = each sample "
    "scored by its own task's head (diagnostic; – on domain-il benchmarks, whose one head scores every task). Mean ± std (ddof=1) over n seeds, in %. ‖∇‖ start = gradient norm of "
    "the LoRA over the first steps of tasks ≥ 1 (mean; small = training stalls after a merge; not in %)."
)


def collect(cells: list[RunConfig], root: Path | None = None):
    """One row per cell: its identity and, when finished, its metrics and accuracy curve."""
    import pandas as pd

    rows = []
    for c in cells:
        rid = c.run_id()
        r = load_result(c, root, rid)
        row = {"benchmark": c.benchmark, "method": c.method, "seed": c.seed, "order_seed": c.order_seed, "run_id": rid, "done": r is not None}
        row["error"] = "" if r is not None else first_error_line(c, root)
        row["stale"] = result_stale_reason(r)  # its code changed since it ran ('' if current or not finished)
        if r is not None:
            m = r["metrics"]
            row.update({k: m.get(k) for k, _ in COLUMNS})
            row["acc_curve"] = m["acc_curve"]
            row["reconstruction"] = r.get("method_info", {}).get("reconstruction") or ""
            row["grad_norm_start"] = start_grad_norm(r.get("grad_norms"))
            row["val_a_last"] = r.get("validation", {}).get("metrics", {}).get("a_last", math.nan)  # tune=true runs
        rows.append(row)
    return pd.DataFrame(rows)


def first_error_line(cfg: RunConfig, root: Path | None = None) -> str:
    """The first line of the error a cell's run recorded (error.json), '' when none."""
    from harness.core.io import read_json
    from harness.store import run_dir

    f = run_dir(cfg, root) / "error.json"
    if not f.exists():
        return ""
    try:
        return (str(read_json(f).get("error", "")).strip().splitlines() or ["(no message)"])[0]
    except (ValueError, OSError):
        return "error.json unreadable"


def start_grad_norm(grad_norms: list[dict] | None) -> float:
    """Mean LoRA ("backbone") gradient norm over the recorded first steps of tasks ≥ 1 (NaN if not recorded)."""
    vals = [v for rec in (grad_norms or [])[1:] for v in rec.get("backbone", [])]
    return float(np.mean(vals)) if vals else math.nan


def aggregate(runs):
    """Mean, std (ddof=1) and n per benchmark × method, in grid order."""
    import pandas as pd

    out = []
    for (bench, method), g in runs.groupby(["benchmark", "method"], sort=False):
        done = g[g["done"]]
        row = {"benchmark": bench, "method": method, "n": int(len(done)), "cells": int(len(g)),
               "failed": int((g["error"] != "").sum()) if "error" in g else 0,
               "stale": int((done["stale"] != "").sum()) if "stale" in done else 0}
        notes = [x for x in done.get("reconstruction", []) if isinstance(x, str) and x]
        row["reconstruction"] = notes[0] if notes else ""
        for key, _ in COLUMNS:
            vals = done[key].astype(float).to_numpy() if len(done) and key in done else []  # absent: older results
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(vals)
        gn = done["grad_norm_start"].astype(float).to_numpy() if "grad_norm_start" in done and len(done) else []
        row["grad_norm_start_mean"] = float(np.nanmean(gn)) if len(gn) and not np.isnan(gn).all() else math.nan
        out.append(row)
    return pd.DataFrame(out)


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if not math.isnan(std) else "")


def markdown(agg, title: str) -> str:
    head = "| benchmark | method | " + " | ".join(label for _, label in COLUMNS) + " | ‖∇‖ start | n |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(COLUMNS) + 4)]
    for _, r in agg.iterrows():
        vals = " | ".join(_fmt(r[f"{k}_mean"], r[f"{k}_std"]) for k, _ in COLUMNS)
        n = f"{r['n']}" if r["n"] == r["cells"] else f"{r['n']}/{r['cells']}"
        n += f" ({r['failed']} failed)" if r.get("failed") else ""
        n += f" ({r['stale']} stale)" if r.get("stale") else ""
        gn = r.get("grad_norm_start_mean", math.nan)
        gn = "–" if math.isnan(gn) else f"{gn:.3g}"
        mark = RECON_MARK if r.get("reconstruction") else ""
        lines.append(f"| {r['benchmark']} | {r['method']}{mark} | {vals} | {gn} | {n} |")
    lines += ["", DEFINITION, ""] + reconstruction_notes(agg)
    return "\n".join(lines)


RECON_MARK = "†"


def reconstruction_notes(agg) -> list[str]:
    """Footnotes for the methods marked † in the table: what each one reconstructs (Method.reconstruction, as the
    runs recorded it), so a reconstructed row is never read as the paper's method."""
    if "reconstruction" not in agg:
        return []
    notes = dict.fromkeys((r["method"], r["reconstruction"]) for _, r in agg.iterrows() if r["reconstruction"])
    if not notes:
        return []
    out = [f"{RECON_MARK} reconstruction — parts of the method are not from public code or text (what is ours):"]
    out += [f"- `{m}`: {text}" for m, text in notes] + [""]
    return out


def stale_lines(runs, name: str) -> list[str]:
    """Markdown bullets for the finished cells whose code changed since they ran: counted, but flagged."""
    if "stale" not in runs or not (runs["stale"] != "").any():
        return []
    bad = runs[runs["stale"] != ""]
    out = ["**Stale cells** (counted above, but produced by code that has changed since; "
           f"rerun them with `clmerge grid {name} --rerun-stale`)", ""]
    return out + [f"- {r.benchmark} × {r.method} × seed {r.seed} (run {r.run_id}): {r.stale}" for r in bad.itertuples()] + [""]


def failed_lines(runs, name: str) -> list[str]:
    """Markdown bullets for the cells whose run failed (first line of the error), and where to look."""
    if "error" not in runs or not (runs["error"] != "").any():
        return []
    bad = runs[runs["error"] != ""]
    out = ["**Failed cells** (not counted; n/N above)", ""]
    out += [f"- {r.benchmark} × {r.method} × seed {r.seed} (run {r.run_id}): {r.error}" for r in bad.itertuples()]
    return out + [f"- details and log tails: `clmerge status {name}`", ""]


def report(
    name: str, cells: list[RunConfig], root: Path | None = None, grid=None, against: list[str] = (),
    focus: list[str] | None = None,
) -> tuple[str, dict[str, Path]]:
    """Write results/tables/<name>.md/.csv and results/plots/<name>.png; return the Markdown and the paths.
    A sweep grid's main table holds the settings selected on validation (harness/report/selection.py; the whole sweep in
    <name>-sweep.csv/.png); `against` adds paired comparisons with those reference methods (harness/report/compare.py),
    of the `focus` methods only when given."""
    root = Path(root or results_dir())
    runs = collect(cells, root)
    title = f"{name}: {int(runs['done'].sum())} of {len(runs)} cells finished"
    paths = {"markdown": root / "tables" / f"{name}.md", "csv": root / "tables" / f"{name}.csv",
             "latex": root / "tables" / f"{name}.tex", "plot": root / "plots" / f"{name}.png"}
    extra = ""
    if grid is not None and (grid.sweep or grid.method_sweep) and len(runs):
        from harness.report import selection

        refit = bool(grid.tune and grid.refit)
        tuning = [c for c in cells if c.tune or not grid.tune]
        if refit:  # the refit cells of the settled selections, whether or not `cells` holds them
            cells = tuning + selection.refit_cells(grid, tuning, collect(tuning, root))
            runs = collect(cells, root)
            title = f"{name}: {int(runs['done'].sum())} of {len(runs)} cells finished"
        runs = selection.annotate(runs, cells, grid)
        table = selection.sweep_table(runs)
        chosen = selection.select(table)
        runs = selection.selected_runs(runs, chosen, refit=refit)
        extra += "\n" + selection.markdown(table, chosen, refit=refit)
        paths["sweep_csv"] = root / "tables" / f"{name}-sweep.csv"
        atomic_write_text(paths["sweep_csv"], table.to_csv(index=False))
        if len(chosen):
            paths["sweep_plot"] = root / "plots" / f"{name}-sweep.png"
            selection.plot(table, chosen, paths["sweep_plot"], name)
        title += "; main table: the settings selected on validation" + (", retrained on all training data" if refit else "")
    if against and len(runs):
        from harness.report.compare import section

        text, _ = section(runs, list(against), focus)  # focus: `compare --method`, its rows only
        extra += "\n" + text
    agg = aggregate(runs)
    from harness.report.table_plots import plot_heatmap
    from harness.report.table_render import aggregate_latex

    md = markdown(agg, title) + extra
    md += "\n".join(stale_lines(runs, name) + failed_lines(runs, name))
    atomic_write_text(paths["markdown"], md)
    atomic_write_text(paths["csv"], agg.to_csv(index=False))
    failed_notes = [x[2:] for x in failed_lines(runs, name) if x.startswith("- ")]
    atomic_write_text(paths["latex"], aggregate_latex(agg, name, COLUMNS, failed_notes))
    if runs["done"].any():
        plot(runs, paths["plot"], name)
        for key, label in COLUMNS[:2]:  # A_last and A_avg: method × benchmark means
            heat = agg.pivot_table(index="method", columns="benchmark", values=f"{key}_mean", sort=False) * 100
            p = root / "plots" / f"{name}-heatmap-{key}.png"
            if plot_heatmap(heat, p, f"{name}: {label} mean over seeds (%)"):
                paths[f"heatmap:{key}"] = p
    else:
        paths.pop("plot")
    return md, paths
