"""`--dry-run`: the plan of a grid or a published table before any compute is spent.

One line per benchmark × method: cells to run / done / failed, whether the benchmark is prepared, the overrides in
force beyond the benchmark's own protocol; for a published table also the rows that cannot run and why, and a
banner when every runnable row was published under another protocol (the table can only be indicative).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.dispatch.preflight import Readiness


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def overrides_in_force(cell: RunConfig) -> dict[str, Any]:
    """The settings of `cell` that differ from its benchmark × method defaults (seeds aside), as `--set` keys."""
    from harness.resolve import resolve

    base = resolve(cell.benchmark, cell.method, cell.seed, cell.order_seed).to_dict()
    mine = cell.to_dict()
    flat_base, flat_mine = _flat(base), _flat(mine)
    out = {}
    for k, v in flat_mine.items():
        if k in ("seed", "order_seed") or flat_base.get(k) == v:
            continue
        out[k.replace("method_params.", "method.")] = v
    return out


def cell_states(cells: list[RunConfig], root: Path | None = None, run_ids: list[str] | None = None) -> dict[str, str]:
    """run_id → done | failed | to run, from the run directories (no queue is asked). `run_ids`: the cells' run ids
    where the caller has them (hashing a config is most of this loop's cost on a large grid)."""
    from harness.store import is_complete, run_dir

    out = {}
    for c, rid in zip(cells, run_ids or [c.run_id() for c in cells]):
        d = run_dir(c, root, rid)
        out[rid] = "done" if is_complete(d) else ("failed" if (d / "error.json").exists() else "to run")
    return out


def _fmt(ov: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in ov.items()) or "–"


def render(name: str, cells: list[RunConfig], readiness: Readiness, resolved=None, root: Path | None = None) -> str:
    """The plan as text: a table, the overrides common to every cell, blocked rows and what to prepare."""
    import pandas as pd

    from harness.core.markdown import markdown_table

    rids = [c.run_id() for c in cells]
    rid_of = {id(c): rid for c, rid in zip(cells, rids)}
    states = cell_states(cells, root, rids)
    blocked = {c.run_id() for c in readiness.unready}
    rows, per_key = [], {}
    for c in cells:
        per_key.setdefault((c.benchmark, c.method), []).append(c)
    overrides = {key: overrides_in_force(group[0]) for key, group in per_key.items()}
    sets = [{(k, repr(v)) for k, v in o.items()} for o in overrides.values()]
    common_keys = set.intersection(*sets) if sets else set()
    first = next(iter(overrides.values()), {})
    common = {k: first[k] for k, _ in sorted(common_keys)}
    for (bench, method), group in per_key.items():
        st = [states[rid_of[id(c)]] for c in group]
        extra = {k: v for k, v in overrides[(bench, method)].items() if (k, repr(v)) not in common_keys}
        rows.append({
            "benchmark": bench, "method": method, "to run": st.count("to run"), "done": st.count("done"),
            "failed": st.count("failed"), "inputs": "ready" if not blocked & {rid_of[id(c)] for c in group} else "MISSING",
            "benchmark data": readiness.prepared.get(bench, "?"),
            "epochs": "/".join(sorted({f"{c.train.epochs}" + (f"×{c.train.epoch_repeats}" if c.train.epoch_repeats > 1 else "")
                                       for c in group})),
            "overrides beyond the benchmark's protocol": _fmt(extra),
        })
    frame = pd.DataFrame(rows)
    todo = int(frame["to run"].sum()) if len(frame) else 0
    out = [f"plan for {name}: {len(cells)} cells — {todo} to run, "
           f"{int(frame['done'].sum()) if len(frame) else 0} done, {int(frame['failed'].sum()) if len(frame) else 0} failed"
           f" (failed cells rerun with --retry-failed); {len(readiness.unready)} blocked by missing inputs", ""]
    if len(frame):
        out.append(markdown_table(frame))
    if common:
        out += ["", "overrides in every cell: " + _fmt(common)]
    if resolved is not None and resolved.spec.grid is None:
        out += _table_rows(resolved)
    if readiness.problems:
        out += ["", "missing inputs (clmerge refuses to submit until they are fixed, or use --skip-unready):"]
        out += [f"  - {p.kind}: {p.subject} ({len(p.cells)} cells) — fix: {p.fix}" for p in readiness.problems]
    return "\n".join(out)


def _table_rows(resolved) -> list[str]:
    """A published table's rows that cannot run or will draw no verdict, and why."""
    entries = resolved.entries
    missing = [e for e in entries if not e.implemented]
    differs = [e for e in entries if e.implemented and not e.same_protocol]
    conflict = [e for e in entries if e.implemented and e.conflict]
    runnable = [e for e in entries if e.implemented]
    out = [""]
    if runnable and len(differs) == len(runnable):
        out.append(f"NOTE: every runnable row of {resolved.spec.name} was published under another protocol "
                   "(protocol differs): the table will be indicative only, no verdict is drawn.")
    out.append(f"table rows: {len(entries)} — {len(runnable)} runnable, {len(missing)} cannot run, "
               f"{len(differs)} protocol differs (no verdict), {len(conflict)} published conflict (no verdict)")
    for e in missing:
        out.append(f"  - cannot run: {e.benchmark} × {e.label} ({e.metric}): {e.missing}")
    for e in differs:
        why = e.note or resolved.spec.protocol_note or "published under another protocol"
        out.append(f"  - protocol differs: {e.benchmark} × {e.label} ({e.metric}): {why}")
    return out
