"""Selection in sweep reports: per benchmark × method, the setting with the best validation A_last is selected, and
its **test** numbers are what the main table reports. The whole sweep (validation and test, every setting) goes to a
secondary table and a plot. There is no option to select on anything but the validation split: test numbers never
choose a setting.

* Selection compares settings on the **same seeds**: the mean validation A_last over the seeds (seed × order seed)
  that every setting of the benchmark × method finished, k of the n seeds the grid has (shown as `k/n`); a setting
  is never chosen on an easy seed the others did not finish. With no such seed, nothing is selected yet. Ties go to
  the first setting in grid order.
* **Refit** (`refit: true` in the grid, the default): the selected setting is then trained again on *all* of each
  task's training data (the same config with `tune: false`, an ordinary content-addressed cell) and the main table
  reports those runs' test numbers — as the papers report models trained on their full training sets; the tuning runs
  saw 90 %. The refit cells of a benchmark × method exist once none of its sweep cells is left to run (each finished
  or failed). `refit: false` reports the tuning runs themselves (trained on 90 %), and the report says so.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from harness.dispatch.sweep import method_keys, setting_label
from harness.math.metrics import mean_std

SWEEP_DEFINITION = (
    "Selected per benchmark × method on validation A_last (a seeded stratified 10 % of each task's training data, "
    "held out of training), mean over the k of n seeds every setting finished (k/n); "
)
REFIT_NOTE = ("the main table reports the selected setting retrained on all training data (refit: true), "
              "the sweep tables the tuning runs (90 % of the training data).")
NO_REFIT_NOTE = ("the main table reports the selected setting's tuning runs, trained on 90 % of the training data "
                 "(refit: false).")


def annotate(runs, cells, grid):
    """`runs` (harness.report.grid_report.collect, one row per cell in `cells` order) with a `setting` column and a
    `refit` column (True for a refit cell: tune off in a tuned grid)."""
    runs = runs.copy()
    runs["setting"] = [setting_label(c, list(method_keys(grid, c.method))) for c in cells]
    runs["refit"] = [bool(grid.tune) and not c.tune for c in cells]
    return runs


def _seed_key(frame):
    order = frame["order_seed"].fillna(-1) if "order_seed" in frame else 0
    return list(zip(frame["seed"], order))


def shared_seeds(group) -> tuple[set, int]:
    """(the seed keys every setting of one benchmark × method finished with a validation number, all seed keys)."""
    keys = set(_seed_key(group))
    shared = None
    for _, g in group.groupby("setting", sort=False):
        ok = g[g["done"]]
        if "val_a_last" in ok:
            ok = ok[~ok["val_a_last"].astype(float).isna()]
        mine = set(_seed_key(ok)) if len(ok) else set()
        shared = mine if shared is None else shared & mine
    return shared or set(), len(keys)


def sweep_table(runs):
    """Per benchmark × method × setting (tuning runs only): finished seeds, validation and test A_last (mean, std),
    test A_avg, and the validation mean over the shared seeds that selection uses (`val_shared_mean`, k of n)."""
    import pandas as pd

    if "refit" in runs:
        runs = runs[~runs["refit"].astype(bool)]
    out = []
    for (bench, method), group in runs.groupby(["benchmark", "method"], sort=False):
        shared, n_seeds = shared_seeds(group)
        for setting, g in group.groupby("setting", sort=False):
            done = g[g["done"]]
            row = {"benchmark": bench, "method": method, "setting": setting, "n": int(len(done)), "cells": int(len(g)),
                   "shared": len(shared), "seeds": n_seeds}
            for key in ("val_a_last", "a_last", "a_avg"):
                vals = done[key].astype(float).to_numpy() if len(done) and key in done else []
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std(vals)
            on_shared = [k in shared for k in _seed_key(done)] if len(done) else []
            vals = done.loc[on_shared, "val_a_last"].astype(float).to_numpy() if any(on_shared) else []
            row["val_shared_mean"] = float(np.mean(vals)) if len(vals) else math.nan
            out.append(row)
    return pd.DataFrame(out)


def select(table):
    """The row of `sweep_table` with the highest validation A_last over the shared seeds per benchmark × method
    (first on ties); a benchmark × method without a seed every setting finished has no selection."""
    import pandas as pd

    chosen = []
    if table.empty:
        return pd.DataFrame(chosen)
    for _, g in table.groupby(["benchmark", "method"], sort=False):
        vals = g["val_shared_mean"].to_numpy(dtype=float)
        if np.isnan(vals).all():
            continue
        chosen.append(g.iloc[int(np.nanargmax(vals))])  # nanargmax returns the first maximum
    return pd.DataFrame(chosen).reset_index(drop=True)


def selected_runs(runs, chosen, refit: bool = False):
    """The cells of the selected settings (all their seeds): the refit cells with `refit`, else the tuning cells."""
    keys = set(zip(chosen["benchmark"], chosen["method"], chosen["setting"])) if len(chosen) else set()
    mask = [k in keys for k in zip(runs["benchmark"], runs["method"], runs["setting"])]
    if "refit" in runs:
        mask = [m and bool(r) == refit for m, r in zip(mask, runs["refit"])]
    return runs[mask]


def refit_cells(grid, cells, runs) -> list:
    """The refit cells of a tuned sweep grid (`grid.refit`): for each benchmark × method whose sweep cells are all
    finished or failed, the selected setting's cells with `tune` off (trained on all training data). `runs`:
    harness.report.grid_report.collect of `cells` (the tuning cells, `cells` order)."""
    if not (grid.tune and grid.refit and (grid.sweep or grid.method_sweep)):
        return []
    runs = annotate(runs, cells, grid)
    settled = {key for key, g in runs.groupby(["benchmark", "method"], sort=False)
               if (g["done"] | (g["error"] != "")).all()}
    if not settled:
        return []
    chosen = select(sweep_table(runs[[(b, m) in settled for b, m in zip(runs["benchmark"], runs["method"])]]))
    keys = set(zip(chosen["benchmark"], chosen["method"], chosen["setting"])) if len(chosen) else set()
    return [dataclasses.replace(c, tune=False) for c, key in zip(cells, zip(runs["benchmark"], runs["method"], runs["setting"]))
            if key in keys]


def _pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if not math.isnan(std) else "")


def markdown(table, chosen, refit: bool = False) -> str:
    picked = set(zip(chosen["benchmark"], chosen["method"], chosen["setting"])) if len(chosen) else set()
    lines = ["### Selected settings (on validation)", "",
             "| benchmark | method | selected setting | val A_last (shared seeds) | val A_last | test A_last | test A_avg "
             "| selected on k/n seeds |", "|---|---|---|---|---|---|---|---|"]
    for _, r in chosen.iterrows():
        lines.append(f"| {r['benchmark']} | {r['method']} | {r['setting']} | {_pct(r['val_shared_mean'], math.nan)} "
                     f"| {_pct(r['val_a_last_mean'], r['val_a_last_std'])} "
                     f"| {_pct(r['a_last_mean'], r['a_last_std'])} | {_pct(r['a_avg_mean'], r['a_avg_std'])} "
                     f"| {r['shared']}/{r['seeds']} |")
    lines += ["", SWEEP_DEFINITION + (REFIT_NOTE if refit else NO_REFIT_NOTE), "", "### The whole sweep", "",
              "| benchmark | method | setting | val A_last | test A_last | test A_avg | n | selected |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        mark = "✓" if (r["benchmark"], r["method"], r["setting"]) in picked else ""
        n = f"{r['n']}" if r["n"] == r["cells"] else f"{r['n']}/{r['cells']}"
        lines.append(f"| {r['benchmark']} | {r['method']} | {r['setting']} | {_pct(r['val_a_last_mean'], r['val_a_last_std'])} "
                     f"| {_pct(r['a_last_mean'], r['a_last_std'])} | {_pct(r['a_avg_mean'], r['a_avg_std'])} | {n} | {mark} |")
    return "\n".join(lines + [""])


def plot(table, chosen, path: Path, title: str) -> None:
    """Per benchmark: validation (x) against test (y) A_last of every setting, one colour per method, the selected
    setting ringed — how far selection on validation lands from the best test setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.core.io import atomic_savefig

    benches = list(dict.fromkeys(table["benchmark"]))
    fig, axes = plt.subplots(1, max(1, len(benches)), figsize=(5.5 * max(1, len(benches)), 4.5), squeeze=False)
    picked = set(zip(chosen["benchmark"], chosen["method"], chosen["setting"])) if len(chosen) else set()
    for ax, bench in zip(axes[0], benches):
        for method, g in table[table["benchmark"] == bench].groupby("method", sort=False):
            x, y = 100 * g["val_a_last_mean"].to_numpy(float), 100 * g["a_last_mean"].to_numpy(float)
            pts = ax.scatter(x, y, label=method, s=25)
            for xi, yi, setting in zip(x, y, g["setting"]):
                if (bench, method, setting) in picked:
                    ax.scatter([xi], [yi], s=140, facecolors="none", edgecolors=pts.get_facecolor()[0], linewidths=1.5)
        ax.set_title(bench)
        ax.set_xlabel("validation A_last (%)")
        ax.set_ylabel("test A_last (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: every setting (selected ringed)")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
