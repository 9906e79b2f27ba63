"""The smoke grid's own reference table and the verdicts of a rerun against it (hand-made numbers)."""

import math

import pandas as pd
import pytest

from harness.core.errors import ConfigError
from harness.report import grid_reference as gr

METRICS = ("a_last", "a_avg", "forgetting", "task_aware_a_last")


def _runs(values: dict[str, list[float]], shift: float = 0.0, ids: str = "r") -> pd.DataFrame:
    rows = []
    for method, vals in values.items():
        for seed, v in enumerate(vals):
            rows.append({"benchmark": "b", "method": method, "seed": seed, "order_seed": None,
                         "run_id": f"{ids}-{method}-{seed}", "done": True,
                         **{k: v + shift for k in METRICS}})
    return pd.DataFrame(rows)


def _reference(runs: pd.DataFrame) -> dict:
    return {"grid": "g", "command": "clmerge reproduce g --update-reference", "environment": {},
            "cells": [{k: r[k] for k in ("benchmark", "method", "seed", "order_seed", "run_id", *METRICS)}
                      for _, r in runs.iterrows()]}


def test_identical_rerun_is_reproduced_and_counts_identical_cells():
    runs = _runs({"m": [0.30, 0.35, 0.40], "n": [0.9, 0.9, 0.9]})
    rows = gr.compare(runs, _reference(runs))
    assert [r.verdict for r in rows] == ["reproduced", "reproduced"]
    assert [r.identical_cells for r in rows] == [3, 3]
    assert rows[0].deltas == {"a_last": 0.0, "a_avg": 0.0}
    text = gr.render(rows, _reference(runs), "g")
    assert "2 of 2 rows reproduced (6 of 6 cells in reproduced rows; 6 cells bit-identical" in text


def test_bound_uses_standard_errors():
    # reference: A_last 30, 35, 40 % (σ = 5 pp, n = 3); ours shifted by s pp.
    # bound = max(1, 2·√(25/3 + 25/3)) = 2·√(50/3) = 8.165 pp
    ref = _runs({"m": [0.30, 0.35, 0.40]})
    bound = 2 * math.sqrt(50 / 3)
    near = gr.compare(_runs({"m": [0.30, 0.35, 0.40]}, shift=(bound - 0.01) / 100), _reference(ref))[0]
    far = gr.compare(_runs({"m": [0.30, 0.35, 0.40]}, shift=(bound + 0.01) / 100), _reference(ref))[0]
    assert near.bounds["a_last"] == pytest.approx(bound)
    assert near.verdict == "reproduced" and far.verdict == "differs"
    assert far.deltas["a_last"] == pytest.approx(bound + 0.01) and far.identical_cells == 0


def test_tolerance_floor_of_one_point():
    ref = _runs({"m": [0.5, 0.5, 0.5]})  # no spread: the bound is the 1 pp floor
    assert gr.compare(_runs({"m": [0.5, 0.5, 0.5]}, shift=0.0099), _reference(ref))[0].verdict == "reproduced"
    assert gr.compare(_runs({"m": [0.5, 0.5, 0.5]}, shift=0.0101), _reference(ref))[0].verdict == "differs"


def test_a_differing_a_avg_alone_fails_the_row():
    ref = _runs({"m": [0.5, 0.5, 0.5]})
    ours = _runs({"m": [0.5, 0.5, 0.5]})
    ours["a_avg"] += 0.05
    row = gr.compare(ours, _reference(ref))[0]
    assert row.deltas["a_last"] == 0 and row.verdict == "differs"


def test_stale_missing_and_unfinished_rows():
    ref = _runs({"m": [0.5, 0.5]})
    stale = gr.compare(_runs({"m": [0.5, 0.5]}, ids="changed"), _reference(ref))
    assert stale[0].verdict == gr.STALE
    assert "--update-reference" in gr.render(stale, _reference(ref), "g")
    assert gr.compare(_runs({"other": [0.5]}), _reference(ref))[0].verdict == gr.MISSING
    ours = _runs({"m": [0.5, 0.5]})
    ours["done"] = False
    assert gr.compare(ours, _reference(ref))[0].verdict == gr.NOT_RUN
    assert not gr.all_reproduced(stale)


def test_write_reference_refuses_a_partial_grid_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(gr, "reference_path", lambda grid: tmp_path / f"{grid}.json")
    runs = _runs({"m": [0.3, 0.4]})
    runs.loc[1, "done"] = False
    with pytest.raises(ConfigError, match="1 of 2 cells of g are not finished"):
        gr.write_reference("g", runs, {}, "cmd", None)
    runs["done"] = True
    gr.write_reference("g", runs, {"cpu": "x"}, "cmd", 12.0)
    back = gr.load_reference("g")
    assert back["cells"][1]["a_last"] == 0.4 and back["environment"] == {"cpu": "x"}
    assert gr.all_reproduced(gr.compare(runs, back))


def test_partial_rerun_compares_the_same_seeds_and_draws_no_verdict():
    ref = _runs({"m": [0.30, 0.40, 0.90]})
    ours = _runs({"m": [0.30, 0.40, 0.90]})
    ours.loc[2, "done"] = False
    row = gr.compare(ours, _reference(ref))[0]
    assert row.verdict == "partial (2/3)" and row.deltas["a_last"] == 0.0 and row.identical_cells == 2
    assert not gr.all_reproduced([row])


def test_a_method_added_after_the_reference_is_new_and_does_not_fail():
    """Adding a method keeps `reproduce smoke` green: its row is reported new, the judged rows still decide."""
    ref = _runs({"m": [0.5, 0.5]})
    rows = gr.compare(_runs({"m": [0.5, 0.5], "added": [0.7, 0.7]}), _reference(ref))
    assert [r.verdict for r in rows] == ["reproduced", "new (not in reference)"]
    assert gr.all_reproduced(rows)
    text = gr.render(rows, _reference(ref), "g")
    assert "1 of 1 rows reproduced" in text and "New rows (added)" in text and "--update-reference" in text
    differs = gr.compare(_runs({"m": [0.6, 0.6], "added": [0.7, 0.7]}), _reference(ref))
    assert not gr.all_reproduced(differs)  # a new row never hides a judged row that differs
