"""Code identity: result.json records the code that produced it; a cell whose code changed since is stale — reported
by status, the plan, dispatch and reports, kept, and rerun only with --rerun-stale. The run id never changes."""

import json
import subprocess

import pytest

from harness.config import ExecConfig
from harness.core.io import atomic_write_json
from harness.dispatch.executors import dispatch
from harness.dispatch.plan import cell_states
from harness.dispatch.status import cell_statuses, format_statuses
from harness.method import code_identity as ci
from harness.report.grid_report import aggregate, collect, markdown, stale_lines
from harness.resolve import resolve
from harness.store import run_dir, stale_reason
from harness.train.run import execute
from tests.conftest import FAST

QUIET = ExecConfig(progress=False)


def _tamper(d, path: str) -> None:
    """Pretend `path` had other content when the result was made (what an edit after the run looks like)."""
    r = json.loads((d / "result.json").read_text())
    r["code"]["files"][path] = "0" * 64
    atomic_write_json(d / "result.json", r)


def test_result_records_code_and_a_changed_file_makes_it_stale(results):
    cfg = resolve("split-digits-2x5", "seq-lora", seed=0, overrides=FAST)
    run_id = cfg.run_id()
    assert execute(cfg, QUIET).status == "done"
    d = run_dir(cfg)
    code = json.loads((d / "result.json").read_text())["code"]
    assert {"methods/seq_lora.py", "methods/_task_vectors.py", "harness/train/trainer.py", "harness/config.py",
            "harness/method/base.py"} <= set(code["files"])
    assert not any(f.startswith(("harness/cli", "harness/report/", "harness/dispatch/", "methods/pm"))
                   for f in code["files"])  # other methods and the reporting side never change a cell's numbers
    assert code["hash"] == ci.files_hash(code["files"]) and isinstance(code["dirty"], list)
    assert cfg.run_id() == run_id and "code" not in cfg.to_dict()  # not part of the identity
    assert stale_reason(d) == "" and cell_states([cfg]) == {run_id: "done"}

    _tamper(d, "methods/seq_lora.py")
    why = stale_reason(d)
    assert why == "code changed since it ran: methods/seq_lora.py"
    # reported everywhere, never silently reused...
    out = execute(cfg, QUIET)
    assert out.status == "skipped" and "STALE" in out.message and "--rerun-stale" in out.message
    assert cell_states([cfg]) == {run_id: "stale"}
    [st] = cell_statuses([cfg])
    assert st.state == "stale" and st.detail == why and "1 stale" in format_statuses([st])
    logs: list[str] = []
    [o] = dispatch([cfg], "debug", log=logs.append)
    assert o.status == "skipped" and any("1 of them are stale" in m and "--rerun-stale" in m for m in logs)
    runs = collect([cfg])
    assert "(1 stale)" in markdown(aggregate(runs), "t") and why in "\n".join(stale_lines(runs, "g"))
    # ...never silently discarded: the result is still there, and still counted
    assert runs["done"].all()
    # --rerun-stale runs it again in the same directory, and the new result is current
    [o] = dispatch([cfg], "debug", log=logs.append, rerun_stale=True)
    assert o.status == "done" and stale_reason(d) == "" and cfg.run_id() == run_id
    assert "rerun: code changed since it ran: methods/seq_lora.py" in (d / "events.log").read_text()


def test_a_result_without_a_code_record_counts_as_stale(results):
    cfg = resolve("split-digits-2x5", "seq-lora", seed=1, overrides=FAST)
    execute(cfg, QUIET)
    d = run_dir(cfg)
    r = json.loads((d / "result.json").read_text())
    del r["code"]
    atomic_write_json(d / "result.json", r)
    assert stale_reason(d) == ci.NO_RECORD
    assert execute(cfg, ExecConfig(progress=False, rerun_stale=True)).status == "done" and stale_reason(d) == ""


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_dirty_files_counts_modified_and_untracked_code(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    (root / "methods").mkdir(parents=True)
    (root / "methods" / "kept.py").write_text("x = 1\n")
    (root / "methods" / "edited.py").write_text("x = 1\n")
    _git(root, "init", "-q")
    _git(root, "-c", "user.email=a@b", "-c", "user.name=a", "add", "-A")
    _git(root, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init")
    (root / "methods" / "edited.py").write_text("x = 2\n")
    (root / "methods" / "new.py").write_text("y = 1\n")  # untracked: a method added in one file
    monkeypatch.setenv("CLMERGE_ROOT", str(root))
    paths = ["methods/edited.py", "methods/kept.py", "methods/new.py"]
    assert ci.dirty_files(paths) == ["methods/edited.py", "methods/new.py"]
    monkeypatch.setenv("CLMERGE_ROOT", str(tmp_path / "no-git"))
    (tmp_path / "no-git").mkdir()
    assert ci.dirty_files(paths) == paths  # without git nothing can be shown clean


def test_files_hash_depends_on_every_file_and_its_path():
    a = {"x.py": "1", "y.py": "2"}
    assert ci.files_hash(a) == ci.files_hash(dict(reversed(list(a.items()))))
    assert ci.files_hash(a) != ci.files_hash({"x.py": "1", "y.py": "3"})
    assert ci.files_hash(a) != ci.files_hash({"x.py": "1", "z.py": "2"})
    assert ci.files_hash(a) != ci.files_hash({"x.py": "1"})


def test_a_method_records_the_modules_of_its_bases_and_the_shared_helpers():
    assert [p.name for p in ci.method_files("dare")] == ["_task_vectors.py", "avg.py", "dare.py"]
    assert [p.name for p in ci.method_files("seq-lora")] == ["_task_vectors.py", "seq_lora.py"]
