"""Paired differences against a reference method and the seeds needed to resolve 1 pp and 2 pp (docs/benchmarks.md,
"Power"). Reads finished cells of grids (`--grid NAME`, under `--results`) or a stored grid reference
(`--reference NAME`, results/reference/grids/NAME.json); A_last in percentage points.

    python benchmarks/power_table.py --reference smoke
    python benchmarks/power_table.py --results /tmp/rd --grid rotated-digits
    python benchmarks/power_table.py --results /tmp/rd --grid rotated-digits --per-task

`--per-task` prints instead, per method, the mean over seeds of each task's accuracy right after it was learnt
(R[j][j]) and after the last task (R[T][j]), and of the merge coefficient α_t where the method records one.

Per method: mean paired difference to the reference with its 95 % t interval, the paired sd σ_d, and the seeds
needed (harness/math/power.py) for a 95 % interval to exclude zero with 80 % power when the true difference is 1 pp or
2 pp. The last line uses the median σ_d over the methods: the benchmark's figure for the power table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing


def cells_from_grid(grid: str, results: Path) -> list[dict]:
    from harness.dispatch.grid import expand, load_grid
    from harness.store import load_result

    out = []
    for c in expand(load_grid(grid)):
        r = load_result(c, results)
        if r is not None:
            out.append({"benchmark": c.benchmark, "method": c.method, "seed": c.seed, "a_last": r["metrics"]["a_last"],
                        "acc_matrix": r["acc_matrix"], "records": r.get("method_records", [])})
    return out


def per_task(cells: list[dict]) -> list[str]:
    """Mean over seeds of R[j][j], R[T][j] (in %) and α_t per benchmark × method."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in cells:
        groups[(c["benchmark"], c["method"])].append(c)
    lines = []
    for (bench, method), cs in groups.items():
        diag = np.mean([[R[j][j] for j in range(len(R))] for R in (c["acc_matrix"] for c in cs)], 0) * 100
        final = np.mean([c["acc_matrix"][-1] for c in cs], 0) * 100
        lines.append(f"{bench} {method} (n={len(cs)}): just learnt {np.round(diag, 1).tolist()}  "
                     f"after the last task {np.round(final, 1).tolist()}")
        alphas = [[rec.get("alpha") for rec in c["records"]] for c in cs]
        if all(a is not None for row in alphas for a in row) and alphas and alphas[0]:
            lines.append(f"  alpha per task {np.round(np.mean(alphas, 0), 3).tolist()}")
    return lines


def cells_from_reference(name: str) -> list[dict]:
    from harness.report.grid_reference import reference_path

    return json.loads(reference_path(name).read_text())["cells"]


def table(cells: list[dict], against: str) -> list[str]:
    from harness.math.power import paired_interval, seeds_to_resolve

    acc: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for c in cells:
        acc[c["benchmark"]][c["method"]][int(c["seed"])] = 100 * float(c["a_last"])
    lines = []
    for bench, by_method in acc.items():
        ref = by_method.get(against)
        if ref is None:
            lines.append(f"{bench}: no {against} cells")
            continue
        lines.append(f"{bench} (A_last, pp; vs {against})")
        lines.append("| method | n | mean diff [95 % t] | σ_d | seeds for 1 pp | seeds for 2 pp |")
        lines.append("|---|---|---|---|---|---|")
        sds = []
        for method, seeds in by_method.items():
            shared = sorted(set(seeds) & set(ref))
            if method == against or len(shared) < 2:
                continue
            mean, sd, lo, hi = paired_interval([seeds[s] - ref[s] for s in shared])
            sds.append(sd)
            lines.append(f"| {method} | {len(shared)} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] | {sd:.2f} | "
                         f"{seeds_to_resolve(sd, 1.0)} | {seeds_to_resolve(sd, 2.0)} |")
        if sds:
            med = statistics.median(sds)
            lines.append(f"| median σ_d | | | {med:.2f} | {seeds_to_resolve(med, 1.0)} | {seeds_to_resolve(med, 2.0)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", action="append", default=[], help="grid name or file (finished cells under --results)")
    p.add_argument("--reference", action="append", default=[], help="stored grid reference name (results/reference/grids)")
    p.add_argument("--results", type=Path, default=None, help="results directory of the grids (default: ./results)")
    p.add_argument("--against", default="seq-lora")
    p.add_argument("--per-task", action="store_true", help="per-task accuracy just learnt / at the end, and α (grids)")
    args = p.parse_args(argv)
    cells = [c for g in args.grid for c in cells_from_grid(g, args.results)]
    if args.per_task:
        print("\n".join(per_task(cells)))
        return 0
    cells += [c for r in args.reference for c in cells_from_reference(r)]
    print("\n".join(table(cells, args.against)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
