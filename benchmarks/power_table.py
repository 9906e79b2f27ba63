"""Paired differences against a reference method and the seeds needed to resolve 1 pp and 2 pp (docs/benchmarks.md,
"Power"). Reads finished cells of grids (`--grid NAME`, under `--results`) or a stored grid reference
(`--reference NAME`, results/reference/grids/NAME.json); A_last in percentage points.

    python benchmarks/power_table.py --reference smoke
    python benchmarks/power_table.py --results /tmp/rd --grid rotated-digits

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
            out.append({"benchmark": c.benchmark, "method": c.method, "seed": c.seed, "a_last": r["metrics"]["a_last"]})
    return out


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
    args = p.parse_args(argv)
    cells = [c for g in args.grid for c in cells_from_grid(g, args.results)]
    cells += [c for r in args.reference for c in cells_from_reference(r)]
    print("\n".join(table(cells, args.against)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
