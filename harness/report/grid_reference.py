"""A grid's committed reference table (`results/reference/grids/<grid>.json`) and the verdicts of a rerun against it.

The project applies its own verdict rule (harness/report/verdicts.py) to itself: a rerun of the embedded `smoke` grid on any
machine is compared, row by row (benchmark × method, over seeds), with the reference that the README shows, so a
newcomer sees "18 of 18 rows reproduced" — or exactly which rows differ — instead of comparing numbers by eye.

The reference stores every cell (run id, seed, unrounded metrics) and the environment that produced it. A row is
compared only when the rerun's cells are the reference's cells (same run ids, i.e. the same resolved configs): a
changed default or method makes the reference *stale*, which is reported (and fails CI) until the reference is
regenerated with `clmerge reproduce GRID --update-reference`. A benchmark × method the reference does not hold (a
method added since) is reported `new (not in reference)` and does not fail: adding a method keeps CI green; a
maintainer adds it with --update-reference.

The reference is about numbers: it stores no code hash, so a rerun whose code changed (harness/method/code_identity.py)
but whose numbers stay within the bound is reproduced — that is the point of rerunning it after a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.core.io import atomic_write_json, read_json
from harness.core.paths import project_root
from harness.math.metrics import mean_std
from harness.report.verdicts import REPRODUCED, bound_of, delta_text, verdict

JUDGED = (("a_last", "A_last"), ("a_avg", "A_avg"))  # metrics with a verdict; the rest are shown in the report only
STALE = "stale reference"
MISSING = "new (not in reference)"  # a method added after the reference: shown, never a failure
NOT_RUN = "not run"
PARTIAL = "partial"  # fewer cells finished than the grid has: Δ over the finished seeds only, no verdict


# Per cell: every number of the grid report's main table, so the report can be rendered from the reference alone
# (harness/report/reference_tables.py; the docs' worked example is checked that way). References written before
# forgetting_mammoth and grad_norm_start were stored lack them (shown as –).
STORED = ("a_last", "a_avg", "forgetting", "forgetting_mammoth", "task_aware_a_last", "grad_norm_start")


def _number(value) -> float:
    """A metric as a float; NaN where the run has none (e.g. task-aware accuracy on a domain-il benchmark)."""
    return float("nan") if value is None else float(value)


def reference_path(grid: str) -> Path:
    return project_root() / "results" / "reference" / "grids" / f"{grid}.json"


def write_reference(grid: str, runs, environment: dict, command: str, wall_s: float | None) -> Path:
    """Store the finished cells of `runs` (harness.report.grid_report.collect) as the grid's reference; refuses a partial grid."""
    from harness.core.errors import ConfigError

    if not runs["done"].all():
        missing = runs[~runs["done"]]
        raise ConfigError(f"--update-reference: {len(missing)} of {len(runs)} cells of {grid} are not finished "
                          f"(e.g. {missing.iloc[0]['method']} seed {missing.iloc[0]['seed']}); a reference holds a "
                          "complete grid")
    cells = [
        {"benchmark": r["benchmark"], "method": r["method"], "seed": int(r["seed"]), "order_seed": r["order_seed"],
         "run_id": r["run_id"], **{k: _number(r.get(k)) for k in STORED},
         **({"reconstruction": r["reconstruction"]} if isinstance(r.get("reconstruction"), str)
            and r["reconstruction"] else {})}
        for _, r in runs.iterrows()
    ]
    path = reference_path(grid)
    atomic_write_json(path, {"grid": grid, "command": command, "wall_s": wall_s, "environment": environment,
                             "cells": cells})
    return path


def load_reference(grid: str) -> dict | None:
    path = reference_path(grid)
    return read_json(path) if path.exists() else None


@dataclass
class RowVerdict:
    benchmark: str
    method: str
    verdict: str  # reproduced | differs | stale reference | not in reference | not run
    n: int
    n_ref: int
    deltas: dict[str, float]  # metric → ours − reference (mean over seeds, in %)
    bounds: dict[str, float]  # metric → the |Δ| bound of the rule (in %)
    identical_cells: int  # cells whose A_last equals the reference's bit for bit


def compare(runs, reference: dict) -> list[RowVerdict]:
    """One verdict per benchmark × method of `runs` (harness.report.grid_report.collect) against `reference`.

    Per judged metric m (A_last, A_avg), in %: Δ = mean_ours − mean_ref over the seeds of each side; the row is
    reproduced iff every judged metric's |Δ| is within the project's bound (harness.report.verdicts.bound_of: max(1 pp,
    2·√(σ_ours²/n_ours + σ_ref²/n_ref)))."""
    import pandas as pd

    ref = pd.DataFrame(reference["cells"])
    out = []
    for (bench, method), ours in runs.groupby(["benchmark", "method"], sort=False):
        theirs = ref[(ref["benchmark"] == bench) & (ref["method"] == method)]
        done = ours[ours["done"]]
        base = dict(benchmark=bench, method=method, n=len(done), n_ref=len(theirs), deltas={}, bounds={},
                    identical_cells=0)
        if theirs.empty:
            out.append(RowVerdict(verdict=MISSING, **base))
            continue
        if set(ours["run_id"]) != set(theirs["run_id"]):
            out.append(RowVerdict(verdict=STALE, **base))
            continue
        if done.empty:
            out.append(RowVerdict(verdict=NOT_RUN, **base))
            continue
        partial = len(done) < len(ours)
        if partial:  # compare the same seeds on both sides; no verdict on a part of the row
            theirs = theirs[theirs["run_id"].isin(set(done["run_id"]))]
        by_id = theirs.set_index("run_id")
        base["identical_cells"] = int(sum(float(r.a_last) == float(by_id.loc[r.run_id, "a_last"])
                                          for r in done.itertuples()))
        row_verdict = REPRODUCED
        for key, _ in JUDGED:
            m, s = mean_std(100 * done[key].astype(float).to_numpy())
            mr, sr = mean_std(100 * theirs[key].astype(float).to_numpy())
            base["deltas"][key] = m - mr
            base["bounds"][key] = bound_of(s, len(done), sr, n_published=len(theirs))
            v = verdict(m, s, len(done), mr, sr, n_published=len(theirs))
            if v != REPRODUCED:
                row_verdict = v
        out.append(RowVerdict(verdict=f"{PARTIAL} ({len(done)}/{len(ours)})" if partial else row_verdict, **base))
    return out


def render(rows: list[RowVerdict], reference: dict, grid: str) -> str:
    """The verdict table and a one-line summary, in Markdown."""
    lines = [f"### {grid}: against the reference (results/reference/grids/{grid}.json)", "",
             "| benchmark | method | Δ A_last | Δ A_avg | bound (A_last / A_avg) | cells identical | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = [delta_text(r.deltas[k], r.bounds.get(k, 0.0)) if k in r.deltas else "–" for k, _ in JUDGED]
        b = " / ".join(f"{r.bounds[k]:.2f}" for k, _ in JUDGED) if r.bounds else "–"
        ident = f"{r.identical_cells}/{r.n}" if r.deltas else "–"
        lines.append(f"| {r.benchmark} | {r.method} | {d[0]} | {d[1]} | {b} | {ident} | {r.verdict} |")
    ok = sum(r.verdict == REPRODUCED for r in rows)
    judged = [r for r in rows if r.verdict != MISSING]
    cells = sum(r.n for r in rows if r.verdict == REPRODUCED)
    ident = sum(r.identical_cells for r in rows)
    total = sum(r.n_ref for r in rows)
    env = reference.get("environment", {})
    lines += ["", f"{ok} of {len(judged)} rows reproduced ({cells} of {total} cells in reproduced rows; {ident} cells "
                  f"bit-identical to the reference). Rule: Δ = ours − reference (mean over seeds, %), reproduced iff "
                  f"|Δ| ≤ max(1 pp, 2·√(σ_ours²/n_ours + σ_ref²/n_ref)) for A_last and A_avg. Reference made by "
                  f"`{reference.get('command', '?')}` on {env.get('cpu', '?')} (torch {env.get('packages', {}).get('torch', '?')}, "
                  f"{env.get('torch_threads', '?')} thread(s) per cell)."]
    new = [r.method for r in rows if r.verdict == MISSING]
    if new:
        lines.append(f"New rows ({', '.join(dict.fromkeys(new))}): not in the reference, so not judged (not a failure). "
                     f"To add them, rerun the whole grid and write the reference: `clmerge reproduce {grid} "
                     "--update-reference`, then commit it with the README table (docs/adding-a-method.md).")
    if any(r.verdict == STALE for r in rows):
        lines.append(f"Stale rows: the cells' configs (run ids) are not the reference's — a default or method changed. "
                     f"Regenerate it with `clmerge reproduce {grid} --update-reference` and commit it.")
    return "\n".join(lines)


def all_reproduced(rows: list[RowVerdict]) -> bool:
    """Every row reproduced, new rows (not in the reference) aside."""
    return all(r.verdict in (REPRODUCED, MISSING) for r in rows)

