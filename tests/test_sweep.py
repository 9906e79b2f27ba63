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
from harness.report.selection import refit_cells, select, selected_runs, sweep_table
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


def _sweep_runs(rows):
    """(setting, seed, val A_last, test A_last) rows of one benchmark × method as `collect` + `annotate` give them."""
    return pd.DataFrame([{"benchmark": "x", "method": "m", "setting": st, "seed": s, "order_seed": None,
                          "val_a_last": v, "a_last": t, "a_avg": t, "done": True, "error": ""} for st, s, v, t in rows])


def test_selection_compares_settings_on_the_seeds_all_of_them_finished():
    # ε = 0.5 finished seeds 0 and 1 (val 0.60, 0.40: mean 0.50); ε = 1 only seed 0 (val 0.55). Over whatever each
    # finished, ε = 1 (0.55) beats ε = 0.5 (0.50) on its easy seed; on the shared seed 0 it loses 0.55 < 0.60.
    runs = _sweep_runs([("eps=0.5", 0, 0.60, 0.5), ("eps=0.5", 1, 0.40, 0.5), ("eps=1", 0, 0.55, 0.5)])
    runs = pd.concat([runs, _sweep_runs([("eps=1", 1, float("nan"), float("nan"))]).assign(done=False)])
    table = sweep_table(runs)
    chosen = select(table)
    assert list(chosen["setting"]) == ["eps=0.5"] and (chosen["shared"].iloc[0], chosen["seeds"].iloc[0]) == (1, 2)
    assert chosen["val_shared_mean"].iloc[0] == pytest.approx(0.60)
    assert list(table["val_a_last_mean"]) == [pytest.approx(0.50), pytest.approx(0.55)]  # the whole-sweep means
    from harness.report.selection import markdown

    assert "| 1/2 |" in markdown(table, chosen, refit=True) and "retrained on all training data" in markdown(table, chosen, refit=True)
    assert "trained on 90 %" in markdown(table, chosen, refit=False)
    # no seed finished by every setting: nothing selected yet
    alone = _sweep_runs([("a", 0, 0.6, 0.5), ("b", 1, 0.7, 0.5)])
    assert select(sweep_table(alone)).empty


def test_refit_cells_are_the_selected_setting_untuned_once_the_sweep_settled(tmp_path):
    grid = load_grid(_grid(tmp_path, method_sweep={"pm": {"method.epsilon": [0.25, 1.0]}}))
    assert grid.refit  # the default: the papers report models trained on all of the training data
    cells = expand(grid)
    rows = []
    for c in cells:  # validation: ε = 1 wins on both seeds; seq-lora has one setting
        val = 0.7 if c.method == "pm" and c.method_params["epsilon"] == 1.0 else 0.5
        rows.append({"benchmark": c.benchmark, "method": c.method, "seed": c.seed, "order_seed": c.order_seed,
                     "run_id": c.run_id(), "done": True, "error": "", "val_a_last": val, "a_last": 0.5, "a_avg": 0.5})
    runs = pd.DataFrame(rows)
    refit = refit_cells(grid, cells, runs)
    assert [(c.method, c.method_params.get("epsilon"), c.seed, c.tune) for c in refit] == [
        ("pm", 1.0, 0, False), ("pm", 1.0, 1, False), ("seq-lora", None, 0, False), ("seq-lora", None, 1, False)]
    plain = resolve("split-digits-2x5", "pm", 1, overrides={**FAST, "method.epsilon": 1.0})
    assert refit[1].run_id() == plain.run_id()  # an ordinary untuned cell: content-addressed, shared with other grids
    # a sweep cell still to run (not finished, no error): that method's selection is not settled, no refit yet
    runs.loc[0, "done"] = False
    assert [c.method for c in refit_cells(grid, cells, runs)] == ["seq-lora", "seq-lora"]
    runs.loc[0, "error"] = "RuntimeError: boom"  # failed counts as settled
    assert len(refit_cells(grid, cells, runs)) == 4
    off = load_grid(_grid(tmp_path, refit=False, method_sweep={"pm": {"method.epsilon": [0.25, 1.0]}}))
    assert refit_cells(off, cells, runs) == []


def test_compare_sweep_selects_refits_and_shows_each_setting(results, capsys):
    args = ["compare", "--method", "pm", "--against", "seq-lora", "--benchmark", "split-digits-2x5", "--seeds", "2",
            "--sweep", "method.epsilon=0.25,1", "--executor", "debug"] + [a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]
    assert main(args + ["--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "| split-digits-2x5 | pm | epsilon=0.25 |" in plan and "| split-digits-2x5 | pm | epsilon=1 |" in plan
    assert "0 of 2 selections settled" in plan
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "  [done] split-digits-2x5 × pm [epsilon=0.25] × seed 0" in out
    assert "refit: 4 cell(s) of the selected settings" in out and ", refit] × seed 0" in out
    assert "### Selected settings (on validation)" in out and "| 2/2 |" in out
    assert "retrained on all training data" in out and "10 of 10 cells finished" in out
    assert main(["status", str(results / "grids" / "compare-pm-split-digits-2x5-sweep-epsilon.yaml")]) == 0
    status = capsys.readouterr().out
    assert "epsilon=0.25" in status and "epsilon=1" in status and ", refit" in status and "10 done" in status
    assert main(["compare", "--method", "pm", "--benchmark", "split-digits-2x5", "--sweep", "method.epsilon"]) == 2
    assert "expected KEY=V1,V2" in capsys.readouterr().err
    assert main(["compare", "--method", "pm", "--benchmark", "split-digits-2x5", "--sweep", "method.epsilon="]) == 2


def test_compare_runs_the_missing_cells_and_prints_the_paired_table(results, capsys):
    args = ["compare", "--method", "pm", "--against", "seq-lora", "--benchmark", "split-digits-2x5", "--seeds", "2",
            "--executor", "debug"] + [a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "### Paired comparison" in out and "| split-digits-2x5 | pm | seq-lora | 2 ⚠ |" in out
    assert "only 2 paired seed(s) (< 5)" in out
    assert main(args + ["--dry-run"]) == 0 and "4 cells — 0 to run, 4 done" in capsys.readouterr().out


def test_cell_progress_counts():
    bar = CellProgress(5, enabled=False)
    bar.running_now(3)
    bar.finished(["done", "failed", "skipped"])
    assert (bar.done, bar.failed, bar.running) == (2, 1, 3) and bar.bar.disable
    bar.close()
