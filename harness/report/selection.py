"""Selection in sweep reports: per benchmark × method, the setting with the best validation A_last (mean over its
finished seeds; the first in grid order on a tie) is selected, and its **test** numbers are what the main table
reports. The whole sweep (validation and test, every setting) goes to a secondary table and a plot. There is no
option to select on anything but the validation split: test numbers never choose a setting.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.dispatch.sweep import method_keys, setting_label
from harness.math.metrics import mean_std

SWEEP_DEFINITION = (
    "Selected per benchmark × method on validation A_last (a seeded stratified 10 % of each task's training data, "
    "held out of training; mean over seeds); the main table reports the selected setting's test numbers."
)


def annotate(runs, cells, grid):
    """`runs` (harness.report.grid_report.collect, one row per cell in `cells` order) with a `setting` column."""
    runs = runs.copy()
    runs["setting"] = [setting_label(c, list(method_keys(grid, c.method))) for c in cells]
    return runs


def sweep_table(runs):
    """Per benchmark × method × setting: finished seeds, validation and test A_last (mean, std), test A_avg."""
    import pandas as pd

    out = []
    for (bench, method, setting), g in runs.groupby(["benchmark", "method", "setting"], sort=False):
        done = g[g["done"]]
        row = {"benchmark": bench, "method": method, "setting": setting, "n": int(len(done)), "cells": int(len(g))}
        for key in ("val_a_last", "a_last", "a_avg"):
            vals = done[key].astype(float).to_numpy() if len(done) and key in done else []
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(vals)
        out.append(row)
    return pd.DataFrame(out)


def select(table):
    """The row of `sweep_table` with the highest mean validation A_last per benchmark × method (first on ties);
    a benchmark × method with no validation number yet has no selection."""
    import pandas as pd

    chosen = []
    for _, g in table.groupby(["benchmark", "method"], sort=False):
        vals = g["val_a_last_mean"].to_numpy(dtype=float)
        if np.isnan(vals).all():
            continue
        chosen.append(g.iloc[int(np.nanargmax(vals))])  # nanargmax returns the first maximum
    return pd.DataFrame(chosen).reset_index(drop=True)


def selected_runs(runs, chosen):
    """The cells of the selected settings (all their seeds)."""
    keys = set(zip(chosen["benchmark"], chosen["method"], chosen["setting"])) if len(chosen) else set()
    mask = [k in keys for k in zip(runs["benchmark"], runs["method"], runs["setting"])]
    return runs[mask]


def _pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if not math.isnan(std) else "")


def markdown(table, chosen) -> str:
    picked = set(zip(chosen["benchmark"], chosen["method"], chosen["setting"])) if len(chosen) else set()
    lines = ["### Selected settings (on validation)", "",
             "| benchmark | method | selected setting | val A_last | test A_last | test A_avg | n |", "|---|---|---|---|---|---|---|"]
    for _, r in chosen.iterrows():
        lines.append(f"| {r['benchmark']} | {r['method']} | {r['setting']} | {_pct(r['val_a_last_mean'], r['val_a_last_std'])} "
                     f"| {_pct(r['a_last_mean'], r['a_last_std'])} | {_pct(r['a_avg_mean'], r['a_avg_std'])} | {r['n']} |")
    lines += ["", SWEEP_DEFINITION, "", "### The whole sweep", "",
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
