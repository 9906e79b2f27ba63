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


def row_labels(lines: list[Line]) -> list[str]:
    """'benchmark · method' per row, made unique: rows that share it also name their published source (paper's table),
    then the published id."""
    base = [f"{ln.entry.benchmark} · {ln.entry.label}" for ln in lines]
    out = list(base)
    for label in {b for b in base if base.count(b) > 1}:
        idx = [i for i, b in enumerate(base) if b == label]
        for i in idx:
            p = lines[i].entry.published
            out[i] = f"{label} · {p.table.split(' (')[0]}" if p is not None else f"{label} · ours only"
        if len({out[i] for i in idx}) < len(idx):
            for i in idx:
                p = lines[i].entry.published
                out[i] = f"{label} · {p.id}" if p is not None else f"{label} · {i}"
    return out


OFF_SCALE_FACTOR = 4.0  # a row whose |Δ| exceeds this many times the panel's typical |Δ| is drawn off-scale


def delta_scale(deltas: list[float], bounds: list[float]) -> float:
    """The half-width (pp) of a Δ panel's axis: wide enough for every bound and for the typical rows, so 1–2 pp
    differences stay readable; a row beyond it is an outlier drawn at the edge with its value written out.

        scale = max(2 · max bound, OFF_SCALE_FACTOR · median |Δ|, 2 pp)"""
    typical = float(np.median(np.abs(deltas))) if deltas else 0.0
    return max(2.0 * max(bounds, default=0.0), OFF_SCALE_FACTOR * typical, 2.0)


def plot_delta(resolved: ResolvedTable, lines: list[Line], path: Path) -> bool:
    """Δ = ours − published per row (a dot; bar: ±2 standard errors of the difference), the row's ±bound as a shaded
    band, coloured by verdict; one panel per metric, each on its own axis (`delta_scale`) so a −30 pp row cannot
    squash 1 pp rows: an off-scale row is an arrow at the panel's edge with its Δ written beside it. Rows without our
    numbers are left out (counted in the title). False: nothing to draw."""
    import math

    rows = [ln for ln in lines if ln.entry.published is not None and ln.n and _finite(ln.delta)]
    if not rows:
        return False
    metrics = list(dict.fromkeys(ln.entry.metric for ln in rows))
    panels = [[ln for ln in rows if ln.entry.metric == m] for m in metrics]
    plt = _pyplot()
    heights = [len(p) + 1.2 for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.0, 1.3 + 0.3 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, metric, panel in zip(axes[:, 0], metrics, panels):
        scale = delta_scale([ln.delta for ln in panel], [ln.bound for ln in panel])
        for y, ln in enumerate(panel):
            p = ln.entry.published
            se2 = (ln.std**2 / ln.n if ln.n > 1 and _finite(ln.std) else 0.0) + (
                (p.std**2 / (ln.n_published or 1)) if p.std is not None else 0.0)
            color = VERDICT_COLORS.get(ln.verdict, "tab:purple")
            judged = ln.verdict in (REPRODUCED, DIFFERS)
            ax.fill_betweenx([y - 0.4, y + 0.4], -ln.bound, ln.bound, color="tab:green" if judged else "tab:gray",
                             alpha=0.12, linewidth=0)
            if abs(ln.delta) <= scale:
                ax.errorbar(ln.delta, y, xerr=2 * math.sqrt(se2), fmt="o", color=color, ecolor=color, capsize=3,
                            markersize=5)
            else:  # off-scale: an arrow at the edge, the value written inside the panel
                edge = math.copysign(scale, ln.delta)
                ax.plot(edge, y, marker=">" if ln.delta > 0 else "<", color=color, markersize=8, clip_on=False)
                ax.annotate(f"{ln.delta:+.1f} pp (off scale)", (edge, y), xytext=(-6 if ln.delta > 0 else 6, 0),
                            textcoords="offset points", ha="right" if ln.delta > 0 else "left", va="center",
                            fontsize=7, color=color)
        ax.set_xlim(-scale * 1.08, scale * 1.08)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(panel)))
        ax.set_yticklabels(row_labels(panel), fontsize=8)
        ax.set_ylim(len(panel) - 0.5, -0.5)
        ax.set_title(METRICS[metric], fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("Δ = ours − published (pp)", fontsize=8)
    left = len([ln for ln in lines if ln.entry.published is not None]) - len(rows)
    fig.suptitle(f"{resolved.spec.name}: Δ per row" + (f" ({left} rows without our numbers not shown)" if left else ""),
                 fontsize=10)
    present = {ln.verdict for ln in rows}
    shown = [v for v in VERDICT_COLORS if v in present] + sorted(present - set(VERDICT_COLORS))
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=VERDICT_COLORS.get(v, "tab:purple"), label=v) for v in shown]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.text(0.5, 0.005 + 0.3 / fig.get_figheight(), "dot ± 2 standard errors; shaded: ±bound (reproduced inside); "
             "each panel has its own scale", ha="center", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    _savefig(fig, path)
    plt.close(fig)
    return True


HEATMAP_MIN_SPAN = 20.0  # pp: the colour scale spans at least this much, so a sub-point gap is not a full colour swing


def heatmap_range(values: np.ndarray) -> tuple[float, float]:
    """The colour range of a heatmap of percentages: the data's range widened symmetrically to HEATMAP_MIN_SPAN pp,
    kept inside [0, 100] where the data is. A 0.8 pp gap then takes 4 % of the colour scale, not all of it."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = max(0.0, HEATMAP_MIN_SPAN - (hi - lo)) / 2
    lo, hi = lo - pad, hi + pad
    if lo < 0 <= float(np.nanmin(values)):
        lo, hi = 0.0, max(hi - lo, HEATMAP_MIN_SPAN)
    if hi > 100 >= float(np.nanmax(values)):
        lo, hi = min(lo - (hi - 100), 100 - HEATMAP_MIN_SPAN), 100.0
    return lo, hi


def plot_heatmap(table: pd.DataFrame, path: Path, title: str, label: str = "accuracy (%)") -> bool:
    """A benchmark × method (or any) table of numbers as an annotated heatmap. False: no number to draw."""
    import numpy as np

    values = table.astype(float)
    if values.isna().all().all():
        return False
    plt = _pyplot()
    width = max(4.5, 1.6 + 0.75 * values.shape[1])  # wide enough for the title (wrapped) and the colour bar
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.45 * values.shape[0]))
    vmin, vmax = heatmap_range(values.to_numpy())
    im = ax.imshow(values.to_numpy(), cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(values.shape[1]))
    ax.set_xticklabels(values.columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]))
    ax.set_yticklabels(values.index, fontsize=8)
    for (i, j), v in np.ndenumerate(values.to_numpy()):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if v < (vmin + vmax) / 2 else "black")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, int(width * 11))), fontsize=9)
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
