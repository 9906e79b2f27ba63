"""The leaderboard: verdict rule, shipped table definitions against the registries, reports over synthetic runs."""

from __future__ import annotations

import csv
import re
import textwrap

import numpy as np
import pytest

from harness import leaderboard as lb
from harness.errors import ConfigError
from harness.io import atomic_write_json
from harness.store import run_dir
from tests.conftest import FAST

REQUIRED_TABLES = {"pm-merging", "pm-ablation", "pm-inr10-cl", "inr-5-10-20", "trm", "smoke"}


def test_verdict_rule_is_the_verdicts_module():
    # the rule itself is tested in tests/test_verdicts.py; the leaderboard must use exactly it
    from harness import verdicts

    assert lb.verdict is verdicts.verdict and lb.VERDICT_RULE is verdicts.VERDICT_RULE


# --------------------------------------------------------------------------------------------------------------------
# Shipped data


def test_shipped_tables_validate_against_registries():
    names = lb.validate_all()
    assert REQUIRED_TABLES <= set(names)
    listed = dict(lb.list_tables())
    assert REQUIRED_TABLES <= set(listed) and all(listed.values())
    from harness.registry import method_names
    from harness.spec import available_benchmarks

    registered, benchmarks = set(method_names()), set(available_benchmarks())
    for name in names:
        resolved = lb.resolve_table(name)
        assert resolved.entries, name
        for e in resolved.entries:
            runnable = e.method in registered and e.benchmark in benchmarks
            assert e.implemented == runnable, (name, e.label, e.benchmark)
            assert bool(e.cells) == runnable
            assert all(c.method == e.method and c.benchmark == e.benchmark for c in e.cells)
            if not runnable:
                assert e.missing  # says why: planned method/benchmark, or no clmerge counterpart


def test_pm_tables_content():
    merging = lb.resolve_table("pm-merging")
    assert len(merging.entries) == 30
    assert {e.benchmark for e in merging.entries} == {
        "imagenet-r-10", "imagenet-r-20", "imagenet-a-10", "domainnet-200-5", "cifar100-10", "cub200-10"}
    assert {e.method for e in merging.entries} == {"seq-lora", "avg", "dare", "coma", "pm"}
    value = {(e.benchmark, e.method): e.published.value for e in merging.entries}
    assert value[("cifar100-10", "pm")] == 88.45  # A_last; 92.89 (likely A_avg) is not stored
    assert value[("imagenet-r-10", "pm")] == 79.95
    assert all(e.metric == "a_last" and e.same_protocol for e in merging.entries)
    ablation = lb.resolve_table("pm-ablation")
    per_module = [e for e in ablation.entries if "per-module" in e.published.id]
    assert len(per_module) == 3 and all(e.overrides.get("method.per_module") is True for e in per_module)
    assert {e.method for e in ablation.entries} >= {"lora-m", "pm-gauss", "pm", "seq-lora"}
    assert all(not e.same_protocol for e in lb.resolve_table("trm").entries)  # indicative only


def test_published_numbers_have_provenance_and_no_memory_numbers():
    rows = lb.load_published()
    assert len(rows) > 150
    assert {r.provenance for r in rows.values()} == {"paper-text", "official-log", "secondary-note", "aggregator"}
    values = {(r.method, r.benchmark, r.value) for r in rows.values()}
    # numbers the notes mark as recalled from memory ([mem]) or as unverified claims must not be stored
    for excluded in [("inflora", "cifar100-10", 86.51), ("inflora", "imagenet-r-10", 75.65), ("inflora", "imagenet-r-5", 77.52),
                     ("pm", "cifar100-10", 92.89), ("pm", "imagenet-r-20", 82.77), ("pm", "imagenet-r-5", 81.47),
                     ("pm", "domainnet-200-5", 84.35)]:
        assert excluded not in values
    assert not any(r.value in (69.29, 71.32, 75.45, 91.53) for r in rows.values())  # CODA-Prompt / SLCA [mem]


# --------------------------------------------------------------------------------------------------------------------
# A private reference directory: synthetic published numbers and one table over the bundled digits benchmark

PUBLISHED = [
    # id, benchmark, method, method_as_published, metric, value, std, provenance
    ("syn/seq", "split-digits", "seq-lora", "LoRA", "a_last", "50.00", "", "paper-text"),
    ("syn/joint", "split-digits", "joint", "Joint", "a_avg", "88.0", ".5", "official-log"),
    ("syn/pm", "split-digits", "pm", "P&M", "a_last", "70.00", "", "secondary-note"),
    ("syn/planned", "split-digits", "future-merge", "Future", "a_last", "60.0", "", "aggregator"),
    ("syn/paper", "cifar100-10", "L2P & Co_1", "L2P & Co_1", "a_last", "71.26", "0.44", "paper-text"),
]


def _reference(tmp_path, monkeypatch, table_yaml: str, published=PUBLISHED):
    ref = tmp_path / "reference"
    (ref / "tables").mkdir(parents=True)
    with open(ref / "published.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(lb.PUBLISHED_COLUMNS)
        for pid, bench, method, as_pub, metric, value, std, prov in published:
            w.writerow([pid, "A paper", "2501.00001", "Venue 2025", "Table 1", bench, "backbone=x", method, as_pub,
                        metric, value, std, "3", prov, "first remark | second remark"])
    (ref / "presets.yaml").write_text(
        "presets:\n  fast:\n    description: tiny\n    overrides:\n"
        + "".join(f"      {k}: {v}\n" for k, v in FAST.items()))
    (ref / "tables" / "syn.yaml").write_text(textwrap.dedent(table_yaml))
    monkeypatch.setenv("CLMERGE_REFERENCE", str(ref))
    monkeypatch.setitem(lb.PLANNED_METHODS, "future-merge", "a method announced but not written (test)")
    return ref


SYN_TABLE = """\
    name: syn
    description: synthetic table
    title: "Synthetic: 100% escaped_names & such"
    source: tests
    preset: fast
    seeds: [0, 1, 2]
    rows:
      - syn/seq
      - syn/joint
      - {ref: syn/pm, protocol: differs, note: "another split"}
      - syn/planned
      - syn/paper
    """


def _result(cfg, a_last, a_avg, acc_matrix=None):
    acc_matrix = acc_matrix or [[1.0], [0.5, 0.9], [0.4, 0.6, a_last]]
    return {
        "status": "complete", "run_id": cfg.run_id(), "config": cfg.to_dict(),
        "stream": {"order_seed": None, "split_hash": "abcdef0123456789" * 4, "class_order": list(range(10)), "tasks": []},
        "acc_matrix": acc_matrix,
        "metrics": {"a_last": a_last, "a_avg": a_avg, "forgetting": 0.1, "acc_curve": [0.9, 0.8, a_last]},
        "env": {"packages": {"torch": "9.9.9", "timm": "1.0"}, "python": "3.11", "device": "cuda:0 (NVIDIA H200)",
                "git_commit": "deadbeef"},
    }


def test_report_over_synthetic_runs_matches_hand_computation(tmp_path, monkeypatch):
    _reference(tmp_path, monkeypatch, SYN_TABLE)
    root = tmp_path / "results"
    resolved = lb.resolve_table("syn")
    by_id = {e.published.id: e for e in resolved.entries}
    assert [e.implemented for e in resolved.entries] == [True, True, True, False, False]
    assert "planned" in by_id["syn/planned"].missing and "no counterpart" in by_id["syn/paper"].missing
    cells = lb.table_cells("syn")
    assert len(cells) == 9 and {c.backbone.preset for c in cells} == {"vit-micro-test"}
    assert len(lb.table_cells("syn", seeds=2)) == 6

    seq = [0.48, 0.50, 0.53]
    for cfg, v in zip(by_id["syn/seq"].cells, seq):
        atomic_write_json(run_dir(cfg, root) / "result.json", _result(cfg, v, v + 0.1))
    joint = [0.90, 0.91]  # only 2 of 3 seeds finished
    for cfg, v in zip(by_id["syn/joint"].cells, joint):
        atomic_write_json(run_dir(cfg, root) / "result.json", _result(cfg, v - 0.05, v))
    cfg = by_id["syn/pm"].cells[0]
    atomic_write_json(run_dir(cfg, root) / "result.json", _result(cfg, 0.75, 0.8))

    md, paths = lb.write_report("syn", root)
    s_mean, s_std = 100 * np.mean(seq), 100 * np.std(seq, ddof=1)  # 50.33 ± 2.52
    j_mean, j_std = 100 * np.mean(joint), 100 * np.std(joint, ddof=1)  # 90.50 ± 0.71
    assert f"| split-digits | LoRA | seq-lora | A_last | {s_mean:.2f} ± {s_std:.2f} (3) | 50.00 | {s_mean - 50:+.2f} | reproduced |" in md
    # Δ = +2.50 > max(1.0, 2·√(0.71² + 0.5²) = 1.73) → differs
    assert f"| split-digits | Joint | joint | A_avg | {j_mean:.2f} ± {j_std:.2f} (2/3) | 88.0 ± 0.5 | +2.50 | differs |" in md
    assert "| split-digits | P&M | pm | A_last | 75.00 (1/3) | 70.00 | +5.00 | protocol differs |" in md
    assert "| split-digits | Future | future-merge | A_last | – | 60.0 | – | no implementation |" in md
    assert "| cifar100-10 | L2P & Co_1 | – | A_last | – | 71.26 ± 0.44 | – | no implementation |" in md
    assert "first remark" in md and "second remark" in md and "another split" in md
    # footer: environment from the runs
    assert "torch 9.9.9" in md and "cuda:0 (NVIDIA H200)" in md and "seeds: 0, 1, 2" in md and "abcdef012345" in md

    rows = {r["ref"]: r for r in csv.DictReader(open(paths["csv"]))}
    assert float(rows["syn/seq"]["ours_mean"]) == pytest.approx(s_mean, abs=1e-3)
    assert float(rows["syn/seq"]["ours_std"]) == pytest.approx(s_std, abs=1e-3)
    assert (rows["syn/seq"]["n"], rows["syn/seq"]["cells"], rows["syn/seq"]["verdict"]) == ("3", "3", "reproduced")
    assert (rows["syn/joint"]["n"], rows["syn/joint"]["verdict"]) == ("2", "differs")
    assert rows["syn/joint"]["provenance"] == "official-log" and rows["syn/pm"]["same_protocol"] == "False"
    for key in ("markdown", "csv", "latex", "plot_vs_published", "plot_curves", "matrix:split-digits:LoRA"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    assert paths["plot_vs_published"].read_bytes()[:4] == b"\x89PNG"
    assert not list(paths["plot_curves"].parent.glob(".*.tmp*"))  # no temporary files left behind


def test_report_with_no_runs_shows_published_and_not_run(tmp_path, monkeypatch):
    _reference(tmp_path, monkeypatch, SYN_TABLE)
    md, paths = lb.write_report("syn", tmp_path / "results", plots=False)
    body = [ln for ln in md.splitlines() if ln.startswith("| split-digits") or ln.startswith("| cifar100")]
    assert len(body) == 5
    for line, value in zip(body, ["50.00", "88.0 ± 0.5", "70.00", "60.0", "71.26 ± 0.44"]):
        assert f"| {value} |" in line
    assert [ln.split(" | ")[7] for ln in body] == ["not run"] * 3 + ["no implementation"] * 2
    assert "no finished runs" in md and set(paths) == {"markdown", "csv", "latex"}


def test_shipped_report_without_runs(tmp_path):
    md, _ = lb.write_report("pm-merging", tmp_path / "results", plots=False)
    for value in ("65.72", "76.90", "75.09", "79.34", "79.95", "88.45", "78.29", "84.71"):
        assert f"| {value} |" in md
    body = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| benchmark")]
    assert len(body) == 30
    assert all(ln.split(" | ")[7] in ("not run", "no implementation") for ln in body)
    md, _ = lb.write_report("smoke", tmp_path / "results", plots=False)
    body = [ln for ln in md.splitlines() if ln.startswith("| split-digits")]
    assert body and all(ln.endswith("| 0/3 | not run |") for ln in body)


def test_grid_table_report_over_synthetic_runs(tmp_path):
    root = tmp_path / "results"
    cells = [c for c in lb.table_cells("smoke") if c.method == "seq-lora"]
    from harness.grid import expand, load_grid

    assert {c.run_id() for c in lb.table_cells("smoke")} == {c.run_id() for c in expand(load_grid("smoke"))}
    a_last, a_avg = [0.48, 0.50, 0.53], [0.70, 0.72, 0.71]
    for cfg, x, y in zip(cells, a_last, a_avg):
        atomic_write_json(run_dir(cfg, root) / "result.json", _result(cfg, x, y))
    md, paths = lb.write_report("smoke", root)
    row = (f"| split-digits | seq-lora | {100 * np.mean(a_last):.2f} ± {100 * np.std(a_last, ddof=1):.2f} | "
           f"{100 * np.mean(a_avg):.2f} ± {100 * np.std(a_avg, ddof=1):.2f} | 3 | done |")
    assert row in md and "| split-digits | joint | – | – | 0/3 | not run |" in md
    tex = paths["latex"].read_text()
    assert r"split-digits & seq-lora & 50.33 $\pm$ 2.52 & 71.00 $\pm$ 1.00 & 3 \\" in tex
    assert paths["plot_curves"].exists() and paths["matrix:split-digits:seq-lora"].exists()


def test_latex_is_balanced_and_escaped(tmp_path, monkeypatch):
    _reference(tmp_path, monkeypatch, SYN_TABLE)
    _, paths = lb.write_report("syn", tmp_path / "results", plots=False)
    tex = paths["latex"].read_text()
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert not stack
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 1
    assert r"L2P \& Co\_1" in tex and r"P\&M" in tex and r"100\% escaped\_names \& such" in tex
    rows = [ln for ln in tex.splitlines() if ln.endswith(r"\\") and not ln.startswith("%")]
    assert len(rows) == 6  # header + 5
    assert all(len(re.findall(r"(?<!\\)&", ln)) == 6 for ln in rows)
    assert lb.tex_escape(r"a_b & 50% #1 {x} ~^\ ±") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{} $\pm$")


# --------------------------------------------------------------------------------------------------------------------
# Errors: typos are errors, planned names are not


def test_table_typos_are_errors(tmp_path, monkeypatch):
    _reference(tmp_path, monkeypatch, SYN_TABLE)
    bad = tmp_path / "bad.yaml"

    def check(rows: str, match: str, extra: str = ""):
        bad.write_text(f"name: bad\ndescription: d\npreset: fast\n{extra}rows:\n{rows}")
        with pytest.raises(ConfigError, match=match):
            lb.resolve_table(str(bad))

    check("  - {ref: syn/seq, method: sq-lora}\n", r"unknown method 'sq-lora'.*seq-lora")
    check("  - {ref: syn/seq, benchmark: split-digts}\n", r"unknown benchmark 'split-digts'.*split-digits")
    check("  - syn/nope\n", r"matches no id|unknown published id")
    check("  - syn/seq\n  - syn/seq\n", "already in this table")
    check("  - {ref: syn/seq, overrides: {train.epoch: 3}}\n", r"unknown key 'train.epoch'.*epochs")
    check("  - {ref: syn/seq, overrides: {method.epsilon: 0.1}}\n", r"unknown key 'method.epsilon'")
    check("  - {ref: syn/seq, overrides: {seed: 1}}\n", "set by the table's 'seeds'")
    check("  - {ref: syn/seq, refs: x}\n", r"unknown key 'refs'")
    check("  - syn/seq\n", "unknown preset 'nope'", extra="preset: nope\n")
    check("  - syn/seq\n", r"unknown method 'sq-lora' in .*method_overrides", extra="method_overrides: {sq-lora: {}}\n")
    # a planned method in a row is not an error: it shows as "no implementation"
    bad.write_text("name: ok\ndescription: d\nrows:\n  - {ref: syn/seq, method: future-merge}\n")
    (entry,) = lb.resolve_table(str(bad)).entries
    assert not entry.implemented and "planned" in entry.missing and entry.cells == []
    with pytest.raises(ConfigError, match="unknown table 'pm-mergin'"):
        lb.resolve_table("pm-mergin")


def test_published_typos_are_errors(tmp_path, monkeypatch):
    bad = PUBLISHED + [("syn/typo", "split-digits", "seq-lroa", "LoRA", "a_last", "50", "", "paper-text")]
    _reference(tmp_path, monkeypatch, SYN_TABLE, published=bad)
    with pytest.raises(ConfigError, match=r"unknown method 'seq-lroa'.*published.csv row 'syn/typo'"):
        lb.check_published(lb.load_published())
    bad = PUBLISHED + [("syn/typo", "imagenet-r-11", "LoRA", "LoRA", "a_last", "50", "", "paper-text")]
    _reference(tmp_path / "b", monkeypatch, SYN_TABLE, published=bad)
    with pytest.raises(ConfigError, match=r"unknown benchmark 'imagenet-r-11'"):
        lb.check_published(lb.load_published())
    for row, match in [(("syn/x", "split-digits", "LoRA", "LoRA", "A_last", "50", "", "paper-text"), "invalid value 'A_last'"),
                       (("syn/x", "split-digits", "LoRA", "LoRA", "a_last", "50", "", "memory"), "invalid value 'memory'"),
                       (("syn/x", "split-digits", "LoRA", "LoRA", "a_last", "5o", "", "paper-text"), "not a number"),
                       (("syn/seq", "split-digits", "LoRA", "LoRA", "a_last", "50", "", "paper-text"), "duplicate id")]:
        _reference(tmp_path / match.replace(" ", "_").replace("'", ""), monkeypatch, SYN_TABLE, published=PUBLISHED + [row])
        with pytest.raises(ConfigError, match=match):
            lb.load_published()
