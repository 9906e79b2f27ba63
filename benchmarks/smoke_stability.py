"""How much the smoke table moves when only the machine's float arithmetic changes (same code, weights and seeds).

`run` executes a grid (default: smoke) into its own results directory with a chosen number of torch threads per
cell and, optionally, a narrower CPU instruction set — a stand-in for "another machine": PyTorch's own kernels
(ATEN_CPU_CAPABILITY), MKL's GEMMs (MKL_ENABLE_INSTRUCTIONS) and oneDNN (ONEDNN_MAX_CPU_ISA) then take their AVX2 code
paths, whose floating-point results differ from the AVX-512 ones. `compare` prints, per benchmark × method, the
change of the mean A_last and A_avg, the largest per-cell change, how many cells are bit-identical, and the verdict
of the project's rule (harness/report/grid_reference.py), treating the first directory as the reference.

    python benchmarks/smoke_stability.py run --results /tmp/t1 --threads 1
    python benchmarks/smoke_stability.py run --results /tmp/t2 --threads 2
    python benchmarks/smoke_stability.py run --results /tmp/avx2 --threads 1 --isa avx2
    python benchmarks/smoke_stability.py compare /tmp/t1 /tmp/t2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def _cells(grid: str):
    from harness.dispatch.grid import expand, load_grid

    return expand(load_grid(grid))


def cmd_run(args) -> int:
    if args.isa:
        os.environ.update(ISA_ENV[args.isa])  # before torch is imported here; the cell subprocesses inherit it
    from harness.config import ExecConfig
    from harness.dispatch.executors import dispatch

    cells = _cells(args.grid)
    start = time.time()
    out = dispatch(cells, executor="local", root=Path(args.results), max_parallel=args.max_parallel,
                   cells_per_job=-(-len(cells) // (3 * args.max_parallel)),
                   exec_cfg=ExecConfig(threads=args.threads, progress=False), log=lambda _: None)
    failed = [o for o in out if o.status == "failed"]
    print(f"{args.grid}: {len(cells)} cells, {len(failed)} failed, {time.time() - start:.0f} s wall "
          f"({args.threads} thread(s) per cell, {args.max_parallel} in parallel, ISA {args.isa or 'native'})")
    return 1 if failed else 0


def cmd_compare(args) -> int:
    import numpy as np

    from harness.report import grid_reference as gr
    from harness.report.grid_report import collect

    cells = _cells(args.grid)
    ref_runs = collect(cells, Path(args.reference))
    ours = collect(cells, Path(args.other))
    reference = {"cells": ref_runs[ref_runs["done"]].to_dict("records")}
    rows = gr.compare(ours, reference)
    print(f"| method | Δ A_last | Δ A_avg | max cell |Δ A_last| | identical cells | verdict |\n|---|---|---|---|---|---|")
    for r in rows:
        a = ref_runs[ref_runs["method"] == r.method].set_index("run_id")["a_last"]
        b = ours[(ours["method"] == r.method) & ours["done"]].set_index("run_id")["a_last"]
        worst = float(np.max(np.abs(100 * (b - a.loc[b.index]).to_numpy()))) if len(b) else float("nan")
        print(f"| {r.method} | {r.deltas.get('a_last', float('nan')):+.2f} | {r.deltas.get('a_avg', float('nan')):+.2f}"
              f" | {worst:.2f} | {r.identical_cells}/{r.n} | {r.verdict} |")
    ok = sum(r.verdict == gr.REPRODUCED for r in rows)
    print(f"\n{ok} of {len(rows)} rows reproduced; {sum(r.identical_cells for r in rows)} of "
          f"{sum(r.n for r in rows)} cells bit-identical")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--results", required=True)
    p.add_argument("--grid", default="smoke")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-parallel", type=int, default=2)
    p.add_argument("--isa", choices=sorted(ISA_ENV), default=None)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("compare")
    p.add_argument("reference")
    p.add_argument("other")
    p.add_argument("--grid", default="smoke")
    p.set_defaults(fn=cmd_compare)
    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
