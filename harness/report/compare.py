"""Paired comparisons in reports, and `clmerge compare`: a method against reference methods on one benchmark.

A pair is two finished runs of one benchmark with the same training seed and class-order seed (same stream, split
and initialisation); the statistics are harness/report/paired.py's on the differences of test A_last in percentage points.
"""

from __future__ import annotations

import math

from harness.report.paired import BOOTSTRAP_MIN_N, compare

DEFINITION = (
    "Δ = method − reference test A_last in points, over the seeds both finished (same seed ⇒ same stream, split and "
    f"init); 95 % CI: paired t-interval, percentile bootstrap (10,000 resamples, seed 0) when n ≥ {BOOTSTRAP_MIN_N}; "
    "w/l/t = seeds the method wins/loses/ties; p = exact two-sided sign test."
)


def paired_table(runs, against: list[str], metric: str = "a_last", methods: list[str] | None = None):
    """One row per benchmark × method × reference: n, mean Δ, CI, interval kind, sign-test counts and p."""
    import pandas as pd

    done = runs[runs["done"]].copy()
    done["order_key"] = done["order_seed"].fillna(-1) if "order_seed" in done else -1
    rows = []
    for bench, g in done.groupby("benchmark", sort=False):
        for ref in against:
            r = g[g["method"] == ref].set_index(["seed", "order_key"])[metric].astype(float)
            if r.empty:
                continue
            for method in dict.fromkeys(g["method"]):
                if method == ref or (methods is not None and method not in methods):
                    continue
                x = g[g["method"] == method].set_index(["seed", "order_key"])[metric].astype(float)
                shared = x.index.intersection(r.index)
                p = compare(100 * (x[shared] - r[shared]).to_numpy())
                rows.append({"benchmark": bench, "method": method, "against": ref, "n": p.n, "mean_diff": p.mean,
                             "ci_lo": p.lo, "ci_hi": p.hi, "interval": p.interval, "wins": p.wins, "losses": p.losses,
                             "ties": p.ties, "sign_p": p.sign_p})
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
        lines.append(f"| {r['benchmark']} | {r['method']} | {r['against']} | {r['n']} | {mean} | {ci} | {r['interval']} "
                     f"| {r['wins']}/{r['losses']}/{r['ties']} | {r['sign_p']:.3g} |")
    return "\n".join(lines + ["", DEFINITION, ""])


def section(runs, against: list[str]) -> tuple[str, object]:
    """The paired-comparison Markdown and its table for a report's (selected) runs."""
    table = paired_table(runs, against)
    present = list(dict.fromkeys(runs.loc[runs["done"], "method"])) if "done" in runs else []
    return markdown(table, against, present), table


def compare_grid(method: str, against: list[str], benchmark: str, seeds: int, overrides: dict):
    """The in-memory grid `clmerge compare` runs: method + references × benchmark × seeds 0..seeds−1."""
    from harness.dispatch.grid import GridSpec

    methods = list(dict.fromkeys([method, *against]))
    return GridSpec(name=f"compare-{method}-{benchmark}", benchmarks=[benchmark], methods=methods,
                    seeds=list(range(seeds)), overrides=dict(overrides), file="clmerge compare")
