"""Plots of a summarised table: Δ per row against its bound, accuracy curves, mean heatmaps, accuracy matrices."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.core.io import atomic_savefig
from harness.report.tables import METRICS, ResolvedTable
from harness.report.verdicts import CONFLICT, DIFFERS, FAILED, PARTIAL, PROTOCOL_DIFFERS, REPRODUCED, _finite

if TYPE_CHECKING:
    import pandas as pd

    from harness.report.tables import Line

VERDICT_COLORS = {REPRODUCED: "tab:green", DIFFERS: "tab:red", PROTOCOL_DIFFERS: "tab:gray", PARTIAL: "tab:orange",
                  FAILED: "black", CONFLICT: "tab:purple"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, path: Path) -> None:
    atomic_savefig(fig, path, dpi=120)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def plot_delta(resolved: ResolvedTable, lines: list[Line], path: Path) -> bool:
    """Δ = ours − published per row (a dot; bar: ±2 standard errors of the difference), the row's ±bound as a shaded
    band, coloured by verdict; rows without our numbers are left out (counted in the title). False: nothing to draw."""
    import math

    rows = [ln for ln in lines if ln.entry.published is not None and ln.n and _finite(ln.delta)]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(rows)))
    for y, ln in enumerate(rows):
        p = ln.entry.published
        se2 = (ln.std**2 / ln.n if ln.n > 1 and _finite(ln.std) else 0.0) + (
            (p.std**2 / (ln.n_published or 1)) if p.std is not None else 0.0)
        color = VERDICT_COLORS.get(ln.verdict, "tab:purple")
        judged = ln.verdict in (REPRODUCED, DIFFERS)
        ax.fill_betweenx([y - 0.4, y + 0.4], -ln.bound, ln.bound, color="tab:green" if judged else "tab:gray",
                         alpha=0.12, linewidth=0)
        ax.errorbar(ln.delta, y, xerr=2 * math.sqrt(se2), fmt="o", color=color, ecolor=color, capsize=3, markersize=5)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{ln.entry.benchmark} · {ln.entry.label} · {METRICS[ln.entry.metric]}" for ln in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Δ = ours − published (pp): dot ± 2 standard errors; shaded: ±bound (reproduced inside)")
    ax.grid(axis="x", alpha=0.3)
    left = len([ln for ln in lines if ln.entry.published is not None]) - len(rows)
    ax.set_title(f"{resolved.spec.name}: Δ per row" + (f" ({left} rows without our numbers not shown)" if left else ""),
                 fontsize=10)
    present = {ln.verdict for ln in rows}
    shown = [v for v in VERDICT_COLORS if v in present] + sorted(present - set(VERDICT_COLORS))
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=VERDICT_COLORS.get(v, "tab:purple"), label=v) for v in shown]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _savefig(fig, path)
    plt.close(fig)
    return True


def plot_heatmap(table: pd.DataFrame, path: Path, title: str, label: str = "accuracy (%)") -> bool:
    """A benchmark × method (or any) table of numbers as an annotated heatmap. False: no number to draw."""
    import numpy as np

    values = table.astype(float)
    if values.isna().all().all():
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * values.shape[1], 1.4 + 0.45 * values.shape[0]))
    im = ax.imshow(values.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]))
    ax.set_xticklabels(values.columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]))
    ax.set_yticklabels(values.index, fontsize=8)
    lo, hi = np.nanmin(values.to_numpy()), np.nanmax(values.to_numpy())
    for (i, j), v in np.ndenumerate(values.to_numpy()):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if v < (lo + hi) / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return True


def plot_curves(resolved: ResolvedTable, lines: list[Line], path: Path) -> bool:
    """Accuracy after each task per table row (mean line, ±1 std band), via `plot`. False: no runs."""
    import pandas as pd


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


def grid_heatmap_table(lines: list[Line], metric: str) -> pd.DataFrame:
    """Mean of `metric` per method (rows) × benchmark (columns), NaN where nothing finished."""
    import pandas as pd

    rows = [{"method": ln.entry.label, "benchmark": ln.entry.benchmark, "mean": ln.mean if ln.n else float("nan")}
            for ln in lines if ln.entry.metric == metric]
    return pd.DataFrame(rows).pivot_table(index="method", columns="benchmark", values="mean", sort=False, dropna=False)


def draw_all(resolved: ResolvedTable, lines: list[Line], plots: Path) -> dict[str, Path]:
    """Every plot a report has something for; {kind: path}."""
    name = resolved.spec.name
    paths: dict[str, Path] = {}
    if resolved.spec.grid is None:
        p = plots / f"{name}-delta.png"
        if plot_delta(resolved, lines, p):
            paths["plot_delta"] = p
    else:
        for metric in resolved.spec.metrics:
            p = plots / f"{name}-heatmap-{metric}.png"
            if plot_heatmap(grid_heatmap_table(lines, metric), p, f"{name}: {METRICS[metric]} mean over seeds (%)"):
                paths[f"heatmap:{metric}"] = p
    p = plots / f"{name}-curves.png"
    if plot_curves(resolved, lines, p):
        paths["plot_curves"] = p
    drawn = set()
    for ln in lines:
        key = (ln.entry.benchmark, ln.entry.label)
        if not ln.results or key in drawn:
            continue
        drawn.add(key)
        first = min(ln.results, key=lambda r: (r["config"].get("seed", 0), r["run_id"]))
        p = plots / name / f"matrix-{_slug(key[0])}-{_slug(key[1])}.png"
        plot_acc_matrix(first, p, f"{key[0]} · {key[1]}\nseed {first['config'].get('seed')} · run {first['run_id'][:8]}")
        paths[f"matrix:{key[0]}:{key[1]}"] = p
    return paths


def plot(runs, path: Path, title: str) -> None:
    """Accuracy after each task per method (mean line, ±1 std band), one panel per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = runs[runs["done"]]
    benches = list(dict.fromkeys(done["benchmark"]))
    fig, axes = plt.subplots(1, max(1, len(benches)), figsize=(5.5 * max(1, len(benches)), 4), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        for method, g in done[done["benchmark"] == bench].groupby("method", sort=False):
            curves = np.array([np.asarray(c, dtype=float) for c in g["acc_curve"]]) * 100
            x = np.arange(1, curves.shape[1] + 1)
            mean = curves.mean(0)
            line = ax.plot(x, mean, marker="o", label=f"{method} (n={len(curves)})")[0]
            if len(curves) > 1:
                std = curves.std(0, ddof=1)
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_title(bench)
        ax.set_xlabel("tasks learnt")
        ax.set_ylabel("accuracy on all seen classes (%)")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
