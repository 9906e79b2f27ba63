"""Report tables rendered from a stored reference (harness/report/reference_tables.py), and the docs' worked example
checked against its committed reference: a table printed into the docs fails here once the code or the reference
changes it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report import grid_reference as gr
from harness.report import reference_tables as rt

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _runs() -> pd.DataFrame:
    """Two methods × 3 seeds, numbers chosen by hand (fractions; the tables show %)."""
    rows = []
    for method, a_last, recon in (("new", [0.50, 0.60, 0.70], "ours"), ("ref", [0.40, 0.45, 0.50], "")):
        for seed, v in enumerate(a_last):
            rows.append({"benchmark": "b", "method": method, "seed": seed, "order_seed": None,
                         "run_id": f"{method}-{seed}", "done": True, "a_last": v, "a_avg": v + 0.1,
                         "forgetting": 0.05, "forgetting_mammoth": 0.06, "task_aware_a_last": float("nan"),
                         "grad_norm_start": 0.25, "reconstruction": recon})
    return pd.DataFrame(rows)


def test_the_reference_keeps_every_main_table_number_and_renders_the_report(tmp_path, monkeypatch):
    """new − ref per seed: 10, 15, 20 points → mean +15.00; t interval 15 ± t_{0.975,2}·5/√3 = 15 ± 12.42
    → [+2.58, +27.42]; 3/0/0, sign p = 2·(1/2)³ = 0.25; A_last new 60.00 ± 10.00, ref 45.00 ± 5.00."""
    monkeypatch.setattr(gr, "reference_path", lambda grid: tmp_path / f"{grid}.json")
    monkeypatch.setattr(rt, "reference_path", lambda grid: tmp_path / f"{grid}.json")
    gr.write_reference("g", _runs(), {}, "clmerge reproduce g --update-reference", None)
    md = rt.reference_report("g", against=["ref"], focus=["new"])
    main, paired = rt.table_blocks(md)
    assert main[2] == "| b | new† | 60.00 ± 10.00 | 70.00 ± 10.00 | 5.00 ± 0.00 | 6.00 ± 0.00 | – | 0.25 | 3 |"
    assert main[3] == "| b | ref | 45.00 ± 5.00 | 55.00 ± 5.00 | 5.00 ± 0.00 | 6.00 ± 0.00 | – | 0.25 | 3 |"
    assert paired[2:] == ["| b | new | ref | 3 ⚠ | +15.00 | [+2.58, +27.42] | t | 3/0/0 | 0.25 |"]
    assert "- `new`: ours" in md  # the reconstruction footnote comes from the reference too


def test_table_blocks_splits_consecutive_table_lines():
    text = "intro\n| a |\n|---|\n| 1 |\n\ntext\n| b |\n"
    assert rt.table_blocks(text) == [["| a |", "|---|", "| 1 |"], ["| b |"]]


def _worked_example_section() -> str:
    text = (DOCS / "adding-a-method.md").read_text()
    start = text.index("**A paired first look.**")
    return text[start:text.index("**Tuning on a validation split.**", start)]


def test_the_worked_example_tables_are_the_reports_of_the_stored_reference():
    """docs/adding-a-method.md "A paired first look": the tables are `clmerge compare --method breadcrumbs --against
    pm,avg,seq-lora --benchmark rotated-digits --seeds 5`'s, rendered again from
    results/reference/grids/compare-breadcrumbs.json (written by `clmerge reproduce compare-breadcrumbs
    --update-reference`, the same cells). A difference means the docs or the reference are stale: regenerate the
    reference and paste the tables this test prints."""
    rendered = rt.table_blocks(rt.reference_report("compare-breadcrumbs", ["pm", "avg", "seq-lora"], ["breadcrumbs"]))
    documented = rt.table_blocks(_worked_example_section())
    assert documented == rendered, "\n\n".join("\n".join(b) for b in rendered)


def test_the_readme_smoke_table_is_the_report_of_the_smoke_reference():
    """README "The smoke table": every row's A_last, A_avg, Forgetting (Chaudhry), Task-aware A_last and n are the
    smoke reference's (results/reference/grids/smoke.json). That reference predates the storing of Forgetting
    (mammoth), ‖∇‖ start and the † marks, so those are not checked until it is regenerated."""
    readme = (DOCS.parent / "README.md").read_text()
    section = readme[readme.index("## The smoke table"):]
    documented = rt.table_blocks(section)[0]
    rendered = rt.table_blocks(rt.reference_report("smoke", against=[]))[0]

    def checked(line: str) -> list[str]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        return [cells[0], cells[1].rstrip("†"), *cells[2:5], cells[6], cells[8]]

    assert len(documented) == len(rendered)
    assert [checked(x) for x in documented[2:]] == [checked(x) for x in rendered[2:]]
