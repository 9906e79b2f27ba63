"""The console script as users call it: exit codes and messages for bad input."""

import subprocess
import sys

import pytest


def clmerge(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--benchmark", "nope", "--method", "seq-lora"], "unknown benchmark 'nope'; valid: cifar100-10"),
        (["run", "--benchmark", "split-digits", "--method", "nope"], "unknown method 'nope'; valid:"),
        (["run", "--benchmark", "split-digits", "--method", "seq-lora", "--set", "train.epoch=2"], "unknown key 'train.epoch'"),
        (["grid", "missing.yaml"], "unknown grid or table 'missing.yaml'"),
        (["report", "nope"], "unknown grid or table 'nope'; valid: compare-breadcrumbs, digits-2x5, inflora-logs"),
        (["reproduce", "pm-mergin"], "unknown grid or table 'pm-mergin'"),
        (["prepare", "imagenet-r-10", "--source", "/nonexistent/imagenet-r"], "no such folder"),
        (["prepare", "split-digits"], "needs no preparation"),
        (["run", "--benchmark", "cifar100-10", "--method", "seq-lora", "--set", "protocol=nope"], "unknown protocol 'nope'"),
        (["stream", "cifar100-10", "--protocol", "nope"], "unknown protocol 'nope'; valid: inflora, pilot, pm"),
    ],
)
def test_bad_input_exits_non_zero_with_message(args, message):
    p = clmerge(*args)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr


def test_list_methods_has_descriptions():
    from harness.method.registry import get_method, method_names

    p = clmerge("list", "methods")
    assert p.returncode == 0
    for name in method_names():
        assert any(line.startswith(name) and get_method(name).description in line for line in p.stdout.splitlines())


def test_list_benchmarks_and_stream():
    assert "split-digits" in clmerge("list", "benchmarks").stdout
    out = clmerge("stream", "split-digits").stdout
    assert "task 4: " in out and "classes 8, 9" in out


def test_grid_dry_run(results):
    from harness.method.registry import method_names

    n = 3 * len(method_names())  # every registered method × 3 seeds
    p = clmerge("grid", "smoke", "--dry-run")
    assert p.returncode == 0 and f"plan for smoke: {n} cells — {n} to run, 0 done; 0 blocked" in p.stdout
    assert "| split-digits | seq-lora | 3 | 0 | 0 | ready | embedded | 6 |" in p.stdout


def test_run_one_cell(results):
    p = clmerge("run", "--benchmark", "split-digits-2x5", "--method", "seq-lora", "--set", "backbone.preset=vit-micro-test", "--set", "train.epochs=1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("done: ") and "A_last" in p.stdout


def test_report_of_a_published_table_without_runs(results):
    p = clmerge("report", "pm-merging")
    assert p.returncode == 0, p.stderr
    assert "| cifar100-10 | P&M | pm† | A_last | – | 88.45 |" in p.stdout
    assert (results / "tables" / "pm-merging.tex").exists()


def test_list_tables():
    out = clmerge("list", "tables").stdout
    assert {"pm-merging", "pm-ablation", "trm"} <= {line.split()[0] for line in out.splitlines()}
