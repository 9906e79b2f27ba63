"""Sweeps in grids, the validation split of tune=true, selection on validation, `clmerge compare`, cell progress."""

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.core.errors import ConfigError
from harness.data.protocol import run_spec
from harness.data.sources import load_source
from harness.data.stream import build_stream
from harness.data.validation import VALIDATION_FRACTION, hold_out
from harness.dispatch.grid import expand, load_grid
from harness.dispatch.progress import CellProgress
from harness.report.selection import select, selected_runs, sweep_table
from harness.resolve import resolve
from tests.conftest import FAST


def _grid(tmp_path, **extra) -> str:
    data = {"name": "sw", "benchmarks": ["split-digits-2x5"], "methods": ["pm", "seq-lora"], "seeds": [0, 1],
            "tune": True, "overrides": dict(FAST), **extra}
    p = tmp_path / "sw.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_sweep_is_a_cartesian_product_per_method_and_content_addressed(tmp_path):
    cells = expand(load_grid(_grid(tmp_path, sweep={"train.lr_lora": ["5e-4", 1e-3]},
                                   method_sweep={"pm": {"method.epsilon": [0.25, 0.5, 1.0]}})))
    pm = [(c.train.lr_lora, c.method_params["epsilon"], c.seed) for c in cells if c.method == "pm"]
    assert pm == [(lr, e, s) for lr in (5e-4, 1e-3) for e in (0.25, 0.5, 1.0) for s in (0, 1)]
    assert sorted((c.train.lr_lora, c.seed) for c in cells if c.method == "seq-lora") == [(5e-4, 0), (5e-4, 1), (1e-3, 0), (1e-3, 1)]
    assert len({c.run_id() for c in cells}) == len(cells) == 16 and all(c.tune for c in cells)
    # the setting equal to the defaults is the very cell a sweep-less tuned grid has: not rerun
    (tmp_path / "plain").mkdir()
    plain = {c.run_id() for c in expand(load_grid(_grid(tmp_path / "plain")))}
    assert plain <= {c.run_id() for c in cells}


@pytest.mark.parametrize("extra, message", [
    ({"sweep": {"train.lr_lorra": [1e-3]}}, "sw.yaml.sweep.train.lr_lorra: unknown key"),
    ({"method_sweep": {"pm": {"method.epsilon": []}}}, "method_sweep.pm.method.epsilon: give a non-empty list"),
    ({"method_sweep": {"pm": {"method.epsilon": [0.5, "big"]}}}, "method_sweep.pm.method.epsilon[1] = 'big'"),
    ({"sweep": {"train.epochs": [1, 2.5]}}, "sweep.train.epochs[1]"),
    ({"sweep": {"method.epsilon": [0.5]}}, "unknown key 'method.epsilon' for method 'seq-lora'"),
    ({"sweep": {"seed": [0, 1]}}, "'seed' is an axis"),
    ({"sweep": {"train.lr_lora": 1e-3}}, "sw.yaml.sweep.train.lr_lora: expected a list"),
    ({"method_sweep": {"ties": {"method.lam": [0.4]}}}, "method_sweep.ties: 'ties' is a registered method but not one of this grid's methods"),
    ({"method_sweep": {"seq-lora": {"method.eps": [0.4]}}}, "(method 'seq-lora' has no parameters: no method.* key applies to it)"),
    ({"tune": False, "sweep": {"train.lr_lora": [5e-4, 1e-3]}}, "no `tune: true`"),
])
def test_bad_sweeps_are_refused_naming_the_key(tmp_path, extra, message):
    with pytest.raises(ConfigError) as err:
        expand(load_grid(_grid(tmp_path, **extra)))
    assert message in str(err.value)


def test_tune_false_leaves_the_config_and_its_hash_unchanged():
    plain, off, on = (resolve("split-digits", "pm", overrides={**FAST, **o}) for o in ({}, {"tune": False}, {"tune": True}))
    assert "tune" not in plain.to_dict() and plain.run_id() == off.run_id() != on.run_id()
    assert on.to_dict()["tune"] is True


def test_hold_out_is_a_seeded_stratified_share_of_training_data():
    cfg = resolve("split-digits", "seq-lora", overrides=FAST)
    data = load_source(run_spec(cfg))
    stream = build_stream(run_spec(cfg), None, data.train_labels, data.test_labels)
    train, val, rec = hold_out(stream, data.train_labels, 0, data.split_hash)
    for full, tr, va in zip(stream.tasks, train.tasks, val.tasks):
        assert np.array_equal(np.sort(np.concatenate([tr.train_indices, va.test_indices])), np.sort(full.train_indices))
        assert not set(tr.train_indices) & set(va.test_indices)
        for c in full.classes:  # per class round(fraction · n) held out
            n = int((data.train_labels[full.train_indices] == c).sum())
            assert int((data.train_labels[va.test_indices] == c).sum()) == round(VALIDATION_FRACTION * n)
        assert np.array_equal(tr.test_indices, full.test_indices)
    assert rec["num_val"] == [len(t.test_indices) for t in val.tasks]
    again, other = hold_out(stream, data.train_labels, 0, data.split_hash), hold_out(stream, data.train_labels, 1, data.split_hash)
    assert again[2]["hash"] == rec["hash"] != other[2]["hash"]
    assert not np.array_equal(other[1].tasks[0].test_indices, val.tasks[0].test_indices)


def test_selection_uses_validation_never_test():
    # setting "a": better on test, worse on validation; "b" the reverse. Selection must pick "b".
    rows = [("a", s, 0.50, 0.90) for s in (0, 1)] + [("b", s, 0.60, 0.70) for s in (0, 1)]
    runs = pd.DataFrame([{"benchmark": "x", "method": "m", "setting": st, "seed": s, "order_seed": None,
                          "val_a_last": v, "a_last": t, "a_avg": t, "done": True} for st, s, v, t in rows])
    chosen = select(sweep_table(runs))
    assert list(chosen["setting"]) == ["b"] and chosen["a_last_mean"].iloc[0] == pytest.approx(0.70)
    assert set(selected_runs(runs, chosen)["setting"]) == {"b"}
    # mean over seeds decides: one bad seed can sink a setting
    runs.loc[(runs["setting"] == "b") & (runs["seed"] == 1), "val_a_last"] = 0.30
    assert list(select(sweep_table(runs))["setting"]) == ["a"]


def test_compare_runs_the_missing_cells_and_prints_the_paired_table(results, capsys):
    args = ["compare", "--method", "pm", "--against", "seq-lora", "--benchmark", "split-digits-2x5", "--seeds", "2",
            "--executor", "debug"] + [a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "### Paired comparison" in out and "| split-digits-2x5 | pm | seq-lora | 2 |" in out
    assert main(args + ["--dry-run"]) == 0 and "4 cells — 0 to run, 4 done" in capsys.readouterr().out


def test_cell_progress_counts():
    bar = CellProgress(5, enabled=False)
    bar.running_now(3)
    bar.finished(["done", "failed", "skipped"])
    assert (bar.done, bar.failed, bar.running) == (2, 1, 3) and bar.bar.disable
    bar.close()
