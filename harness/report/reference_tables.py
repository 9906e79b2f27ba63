"""A grid's report tables rendered from its stored reference alone (results/reference/grids/<grid>.json).

Tables printed into the docs go stale when the code changes; a test renders them again from the committed reference
and fails when the docs differ (tests/test_reference_tables.py checks the worked example of docs/adding-a-method.md).
The reference holds every number of the main table per cell (harness/report/grid_reference.py STORED), so the same
functions as `report` (aggregate, markdown, the paired section) produce the same tables without a results directory.
"""

from __future__ import annotations

import math

from harness.core.errors import ConfigError
from harness.report.grid_reference import STORED, load_reference, reference_path


def reference_runs(grid: str):
    """The reference's cells as `grid_report.collect` rows (all finished, current, none failed)."""
    import pandas as pd

    reference = load_reference(grid)
    if reference is None:
        raise ConfigError(f"no reference for grid {grid!r} ({reference_path(grid)}); write it with "
                          f"`clmerge reproduce {grid} --update-reference`")
    rows = [{**{k: cell.get(k, math.nan) for k in STORED}, "benchmark": cell["benchmark"], "method": cell["method"],
             "seed": cell["seed"], "order_seed": cell["order_seed"], "run_id": cell["run_id"], "done": True,
             "error": "", "stale": "", "reconstruction": cell.get("reconstruction", "")}
            for cell in reference["cells"]]
    return pd.DataFrame(rows)


def reference_report(grid: str, against: list[str], focus: list[str] | None = None) -> str:
    """The Markdown `clmerge report GRID --against …` (or `compare --method FOCUS`) prints, from the reference."""
    from harness.report.compare import section
    from harness.report.grid_report import aggregate, markdown

    runs = reference_runs(grid)
    title = f"{grid}: {len(runs)} of {len(runs)} cells finished (reference)"
    paired, _ = section(runs, list(against), focus)
    return markdown(aggregate(runs), title) + "\n" + paired


def table_blocks(markdown_text: str) -> list[list[str]]:
    """The Markdown tables of a text, each as its list of lines (consecutive lines starting with '|')."""
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in markdown_text.splitlines():
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks
