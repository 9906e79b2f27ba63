"""Paired comparisons in reports, and `clmerge compare`: a method against reference methods on one benchmark.

A pair is two finished runs of one benchmark with the same training seed and class-order seed (same stream, split
and initialisation); the statistics are harness/report/paired.py's on the differences of test A_last in percentage points.
"""

from __future__ import annotations

import math

from harness.report.paired import MIN_SEEDS, compare

DEFINITION = (
    "Δ = method − reference test A_last in points, over the seeds both finished (same seed ⇒ same stream, split and "
    "init); 95 % CI: paired t-interval (nominal coverage at any n; none when every Δ is equal); w/l/t = seeds the "
    f"method wins/loses/ties; p = exact two-sided sign test (cannot reach 0.05 under 6 untied seeds). ⚠ = fewer than "
    f"{MIN_SEEDS} paired seeds."
)


def paired_table(runs, against: list[str], metric: str = "a_last", methods: list[str] | None = None):
    """One row per benchmark × method × reference: n, mean Δ, CI, interval kind, sign-test counts and p, warning.

    With `methods` (e.g. `compare --method`), only those methods' rows, in that order; without, every method against
    each reference. A pair is shown once: no mirror row (B vs A after A vs B, when both are references)."""
    import pandas as pd

    done = runs[runs["done"]].copy()
    done["order_key"] = done["order_seed"].fillna(-1) if "order_seed" in done else -1
    rows, shown = [], set()
    for bench, g in done.groupby("benchmark", sort=False):
        present = list(dict.fromkeys(g["method"]))
        order = [m for m in methods if m in present] if methods is not None else present
        for method in order:
            x = g[g["method"] == method].set_index(["seed", "order_key"])[metric].astype(float)
            for ref in against:
                r = g[g["method"] == ref].set_index(["seed", "order_key"])[metric].astype(float)
                if r.empty or method == ref or (bench, ref, method) in shown:
                    continue
                shown.add((bench, method, ref))
                shared = x.index.intersection(r.index)
                p = compare(100 * (x[shared] - r[shared]).to_numpy())
                rows.append({"benchmark": bench, "method": method, "against": ref, "n": p.n, "mean_diff": p.mean,
                             "ci_lo": p.lo, "ci_hi": p.hi, "interval": p.interval, "wins": p.wins, "losses": p.losses,
                             "ties": p.ties, "sign_p": p.sign_p, "warning": p.warning})
    return pd.DataFrame(rows)


def markdown(table, against: list[str], present: list[str]) -> str:
    lines = ["### Paired comparison (test A_last)", ""]
    missing = [a for a in against if a not in present]
    if missing:
        lines += [f"(no pairs against {', '.join(missing)}: not in these results; choose with --against METHOD)", ""]
    if table.empty:
        return "\n".join(lines)
    lines += ["| benchmark | method | vs | n | Δ (points) | 95 % CI | CI | w/l/t | sign p |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        ci = "–" if math.isnan(r["ci_lo"]) else f"[{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}]"
        mean = "–" if math.isnan(r["mean_diff"]) else f"{r['mean_diff']:+.2f}"
        n = f"{r['n']} ⚠" if r["n"] < MIN_SEEDS else f"{r['n']}"
        lines.append(f"| {r['benchmark']} | {r['method']} | {r['against']} | {n} | {mean} | {ci} | {r['interval']} "
                     f"| {r['wins']}/{r['losses']}/{r['ties']} | {r['sign_p']:.3g} |")
    warnings = list(dict.fromkeys(f"{r['method']} vs {r['against']}: {r['warning']}" for _, r in table.iterrows()
                                  if r["warning"]))
    if warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines + ["", DEFINITION, ""])


def section(runs, against: list[str], methods: list[str] | None = None) -> tuple[str, object]:
    """The paired-comparison Markdown and its table for a report's (selected) runs; `methods`: only their rows."""
    table = paired_table(runs, against, methods=methods)
    present = list(dict.fromkeys(runs.loc[runs["done"], "method"])) if "done" in runs else []
    return markdown(table, against, present), table


def compare_grid(method: str, against: list[str], benchmark: str, seeds: int, overrides: dict,
                 sweep: dict | None = None):
    """The in-memory grid `clmerge compare` runs: method + references × benchmark × seeds 0..seeds−1; with `sweep`
    ({key: [values]}, `--sweep`), a tuned grid sweeping those keys of `method` (references at their defaults)."""
    from harness.dispatch.grid import GridSpec

    methods = list(dict.fromkeys([method, *against]))
    tuned = {"tune": True, "method_sweep": {method: dict(sweep)}} if sweep else {}
    name = f"compare-{method}-{benchmark}" + ("-sweep-" + "-".join(k.split(".")[-1] for k in sweep) if sweep else "")
    return GridSpec(name=name, benchmarks=[benchmark], methods=methods, seeds=list(range(seeds)),
                    overrides=dict(overrides), file="clmerge compare", **tuned)
