"""Pre-flight and plan: every missing input named once with the command that fixes it, nothing submitted; seeds
validated up front; `--skip-unready` runs the ready cells only."""

from __future__ import annotations

import pytest

from harness.core.errors import ConfigError
from harness.data.prepare import prepare
from harness.data.spec import load_spec
from harness.dispatch import plan
from harness.dispatch import preflight
from harness.report.leaderboard import resolve_table, table_cells
from harness.resolve import resolve
from tests import imagegen as gen


@pytest.fixture
def empty(tmp_path, monkeypatch):
    """Nothing prepared, no Hub weights cached."""
    monkeypatch.setenv("CLMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLMERGE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(preflight, "_hub_cached", lambda name: False)
    return tmp_path


def test_nothing_prepared_gives_one_message_with_every_command(empty):
    cells = table_cells("pm-merging", seeds=1)
    r = preflight.check(cells)
    assert not r.ok and len(r.unready) == 30 and not r.ready
    by = {(p.kind, p.subject): p for p in r.problems}
    # imagenet-r-10 and -20 read one cache (source.cache: imagenet-r): one problem, one prepare command
    for subject, n in (("imagenet-r", 10), ("imagenet-a", 5), ("domainnet-200-5", 5), ("cifar100-10", 5), ("cub200-10", 5)):
        assert len(by[("benchmark not prepared", subject)].cells) == n
    assert by[("benchmark not prepared", "imagenet-r")].fix.startswith("clmerge prepare imagenet-r-10")
    assert by[("benchmark not prepared", "cifar100-10")].fix.startswith("clmerge prepare cifar100-10")
    dn = by[("benchmark not prepared", "domainnet-200-5")].fix
    assert "--classes" in dn and "This list is not public" in dn and "docs/benchmarks.md" in dn  # DN*'s class list
    weights = by[("backbone weights missing", "vit-b16-in21k-ft-in1k")]
    assert len(weights.cells) == 30 and "HF_HUB_OFFLINE" in weights.detail
    msg = preflight.message(r, "pm-merging")
    assert msg.startswith("pm-merging: 30 of 30 cells cannot run yet; nothing was submitted.")
    assert msg.count("\n    clmerge prepare ") == 5 and "vit_base_patch16_224.augreg2_in21k_ft_in1k" in msg
    assert "--skip-unready" not in msg  # nothing is ready


def test_prepared_benchmark_and_weights_file_make_cells_ready(empty, tmp_path):
    src = gen.class_folders(tmp_path / "imagenet-r", gen.wnids(200), per_class=5)
    prepare(load_spec("imagenet-r-10"), source=str(src), storage_size=8, log=lambda _: None)
    weights = tmp_path / "vit.safetensors"
    weights.write_bytes(b"x")
    ok = resolve("imagenet-r-10", "pm", overrides={"backbone.weights": str(weights)})
    other = resolve("imagenet-a-10", "pm", overrides={"backbone.weights": str(weights)})
    missing = resolve("imagenet-r-10", "pm", overrides={"backbone.weights": str(tmp_path / "nope.safetensors")})
    digits = resolve("split-digits", "seq-lora")
    r = preflight.check([ok, other, missing, digits])
    assert [c.run_id() for c in r.ready] == [ok.run_id(), digits.run_id()]
    assert {(p.kind, p.subject) for p in r.problems} == {("benchmark not prepared", "imagenet-a"),
                                                          ("backbone weights missing", "vit-b16-in21k-ft-in1k")}
    assert r.prepared == {"imagenet-r-10": "prepared: seeded stratified split", "imagenet-a-10": "not prepared",
                          "split-digits": "embedded"}
    assert "Or run the 2 ready cells only with --skip-unready." in preflight.message(r, "x")


def test_plan_lists_states_inputs_and_rows_that_cannot_run(empty):
    from harness.core.io import atomic_write_json
    from harness.store import run_dir

    resolved = resolve_table("pm-merging", 1)
    cells = resolved.cells()
    atomic_write_json(run_dir(cells[0]) / "error.json", {"error": "boom"})
    text = plan.render("pm-merging", cells, preflight.check(cells), resolved)
    # the failed cell is among those this command runs (dispatch reruns every cell without its own result)
    assert ("plan for pm-merging: 30 cells — 30 to run (including 1 failed: this command reruns them; "
            "--retry-failed runs only the failed), 0 done") in text
    assert "| imagenet-r-10 | seq-lora | 1 | 0 | 1 | MISSING | not prepared |" in text
    assert "| domainnet-200-5 | pm | 1 | 0 | 0 | MISSING | not prepared | 5×10 |" in text  # DN* at 5 epochs
    assert "10 protocol differs (no verdict)" in text and "protocol differs: cub200-10 × P&M" in text
    trm = resolve_table("trm", 1)
    text = plan.render("trm", trm.cells(), preflight.check(trm.cells()), trm)
    assert "every runnable row of trm was published under another protocol" in text
    assert "cannot run: cifar100-20 × TRM" in text


def test_negative_seeds_are_refused_up_front():
    with pytest.raises(ConfigError, match=r"seed: must be an integer in \[0, 2\*\*32\), got -1"):
        resolve("split-digits", "seq-lora", seed=-1)
    with pytest.raises(ConfigError, match=r"order_seed: must be an integer"):
        resolve("cifar100-10", "seq-lora", order_seed=-3)
    with pytest.raises(ConfigError, match=r"seeds\[1\]: must be an integer"):
        table_cells("pm-merging", seeds=[0, -1])


def test_cli_refuses_with_one_message_and_skip_unready_runs_the_rest(empty, capsys, monkeypatch):
    import harness.dispatch.executors
    from harness.cli import main

    submitted = []
    monkeypatch.setattr(harness.dispatch.executors, "dispatch", lambda cells, **kw: submitted.extend(cells) or [])

    assert main(["reproduce", "pm-merging", "--seeds", "1"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "30 of 30 cells cannot run yet; nothing was submitted" in err
    assert "clmerge prepare cub200-10" in err and not (empty / "results" / "runs").exists()
    assert main(["run", "--benchmark", "split-digits", "--method", "seq-lora", "--seed", "-1"]) == 2
    assert "seed: must be an integer in [0, 2**32), got -1" in capsys.readouterr().err
    grid = empty / "mixed.yaml"
    grid.write_text("name: mixed\nbenchmarks: [split-digits-2x5, imagenet-r-10]\nmethods: [seq-lora]\nseeds: [0]\n"
                    "overrides: {backbone.preset: vit-micro-test, train.epochs: 1, train.batch_size: 64}\n")
    assert main(["grid", str(grid), "--executor", "debug"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 cells cannot run yet" in err and "--skip-unready" in err and not submitted
    assert main(["grid", str(grid), "--executor", "debug", "--skip-unready"]) == 0
    out = capsys.readouterr().out
    assert "--skip-unready: skipping 1 cells with missing inputs benchmark not prepared: imagenet-r (1)" in out
    assert [c.benchmark for c in submitted] == ["split-digits-2x5"]  # only the ready cell goes to the executor


def test_fix_commands_carry_the_results_directory(tmp_path, monkeypatch, capsys):
    """`reproduce … --results DIR`: the printed prepare commands prepare into DIR/cache, where the runs look."""
    from harness.cli import main

    monkeypatch.delenv("CLMERGE_CACHE", raising=False)
    monkeypatch.delenv("CLMERGE_RESULTS", raising=False)
    monkeypatch.setattr(preflight, "_hub_cached", lambda name: True)
    out = tmp_path / "my results"
    assert main(["--results", str(out), "reproduce", "pm-merging", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"    clmerge --results '{out}' prepare cifar100-10" in err and "\n    clmerge prepare" not in err
    monkeypatch.setenv("CLMERGE_CACHE", str(tmp_path / "cache"))  # an explicit cache: the command needs no --results
    assert main(["--results", str(out), "reproduce", "pm-merging", "--seeds", "1"]) == 2
    assert "\n    clmerge prepare cifar100-10" in capsys.readouterr().err
