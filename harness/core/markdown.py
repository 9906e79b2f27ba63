"""Markdown pipe tables from pandas frames (every report and plan prints one). Hand-written in six lines, because
pandas' `DataFrame.to_markdown` needs the extra `tabulate` package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def _md(text: Any) -> str:
    """A Markdown table cell: '|' escaped."""
    return str(text).replace("|", "\\|")


def markdown_table(frame: "pd.DataFrame") -> str:
    """A pipe table of `frame` (all cells as given; '|' escaped)."""
    head = "| " + " | ".join(map(_md, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_md(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])
