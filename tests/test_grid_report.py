"""Grid expansion, submitit dispatch (local and debug executors), skip of finished cells, and the report."""

import json

import numpy as np
import pytest
import yaml

from harness.core.errors import ConfigError
from harness.dispatch.executors import dispatch
from harness.dispatch.grid import expand, load_grid
from harness.report.grid_report import report
from harness.store import run_dir
from tests.conftest import FAST


def _grid(tmp_path, **extra) -> str:
    data = {
        "name": "tiny",
        "benchmarks": ["split-digits-2x5"],
        "methods": ["seq-lora", "joint"],
        "seeds": [0, 1],
        "overrides": dict(FAST),
        **extra,
    }
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_expand_with_method_overrides(tmp_path):
    grid = load_grid(_grid(tmp_path, method_overrides={"joint": {"train.epochs": 2}}, order_seeds=[None, 5]))
    cells = expand(grid)
    # natural order: the two order seeds collapse into one cell per (method, seed)
    assert [(c.method, c.seed) for c in cells] == [("seq-lora", 0), ("seq-lora", 1), ("joint", 0), ("joint", 1)]
    assert {c.train.epochs for c in cells if c.method == "joint"} == {2}
    assert {c.train.epochs for c in cells if c.method == "seq-lora"} == {1}


def test_smoke_grid_covers_every_registered_method():
    from harness.method.registry import method_names

    cells = expand(load_grid("smoke"))
    assert {c.method for c in cells} == set(method_names())
    assert {c.seed for c in cells} == {0, 1, 2}


def test_grid_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'sq-lora'.*seq-lora"):
        expand(load_grid(_grid(tmp_path, methods=["sq-lora"])))
    with pytest.raises(ConfigError, match="unknown key 'seed'; valid keys"):
        load_grid(_grid(tmp_path, seed=[1]))
    with pytest.raises(ConfigError, match="neither a file nor a name"):
        load_grid("no-such-grid")


def test_local_dispatch_skips_finished_and_report_matches_hand_computation(tmp_path, results):
    cells = expand(load_grid(_grid(tmp_path)))
    outcomes = dispatch(cells, executor="local", root=results, max_parallel=2, log=lambda _: None)
    assert sorted(o.status for o in outcomes) == ["done"] * 4
    again = dispatch(cells, executor="local", root=results, log=lambda _: None)
    assert [o.status for o in again] == ["skipped"] * 4

    md, paths = report("tiny", cells, results)
    assert paths["plot"].exists() and paths["plot"].stat().st_size > 1000
    assert paths["heatmap:a_last"].read_bytes()[:4] == b"\x89PNG" and "seq-lora" in paths["latex"].read_text()
    for method in ("seq-lora", "joint"):
        a_last = [json.loads((run_dir(c, results) / "result.json").read_text())["metrics"]["a_last"] for c in cells if c.method == method]
        mean, std = np.mean(a_last) * 100, np.std(a_last, ddof=1) * 100
        assert f"| split-digits-2x5 | {method} | {mean:.2f} ± {std:.2f} |" in md
    import pandas as pd

    csv = pd.read_csv(paths["csv"])
    assert list(csv["n"]) == [2, 2] and not csv["a_avg_mean"].isna().any()


def test_debug_executor_and_failure_reporting(tmp_path, results, monkeypatch):
    cells = expand(load_grid(_grid(tmp_path, methods=["seq-lora"], seeds=[0])))
    from methods.seq_lora import SeqLoRA

    def boom(self, model, task, data):
        raise RuntimeError("merge exploded")

    monkeypatch.setattr(SeqLoRA, "end_task", boom)
    outcomes = dispatch(cells, executor="debug", root=results, log=lambda _: None)
    assert [o.status for o in outcomes] == ["failed"]
    assert "merge exploded" in outcomes[0].message and "Traceback" in outcomes[0].traceback
    md, paths = report("tiny", cells, results)
    assert "0/1 (1 failed)" in md and "plot" not in paths  # failed, never "not run"; nothing finished: no plot
    assert f"(run {cells[0].run_id()}): RuntimeError: merge exploded" in md and "clmerge status tiny" in md
    assert "Traceback" not in md and r"\begin{tabular}" in paths["latex"].read_text()


def test_report_with_partial_seeds_shows_n(tmp_path, results):
    cells = expand(load_grid(_grid(tmp_path, methods=["seq-lora"], seeds=[0, 1])))
    dispatch(cells[:1], executor="debug", root=results, log=lambda _: None)
    md, _ = report("tiny", cells, results)
    row = next(line for line in md.splitlines() if "| seq-lora |" in line)
    assert row.endswith("| 1/2 |") and "±" not in row  # one seed: no std


def test_report_marks_reconstructed_methods_and_says_what_is_reconstructed():
    """A method whose runs recorded a `reconstruction` text is shown as `name†`, with a footnote giving the text;
    the others are unmarked."""
    import pandas as pd

    from harness.report.grid_report import aggregate, markdown

    base = {"benchmark": "b", "done": True, "a_last": 0.5, "a_avg": 0.6, "forgetting": 0.1, "task_aware_a_last": 0.9,
            "grad_norm_start": 0.2}
    runs = pd.DataFrame([
        {**base, "method": "trm", "seed": 0, "reconstruction": "everything beyond the abstract"},
        {**base, "method": "trm", "seed": 1, "reconstruction": "everything beyond the abstract"},
        {**base, "method": "seq-lora", "seed": 0, "reconstruction": ""},
    ])
    md = markdown(aggregate(runs), "t")
    assert "| b | trm† |" in md and "| b | seq-lora |" in md and "seq-lora†" not in md
    assert "- `trm`: everything beyond the abstract" in md and md.count("- `") == 1
