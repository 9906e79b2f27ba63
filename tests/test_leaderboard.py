"""The leaderboard: verdict rule, shipped table definitions against the registries, reports over synthetic runs."""

from __future__ import annotations

import csv
import re
import textwrap

import numpy as np
import pytest

from harness.core.errors import ConfigError
from harness.core.io import atomic_write_json
from harness.report import leaderboard as lb
from harness.store import run_dir
from tests.conftest import FAST

REQUIRED_TABLES = {"pm-merging", "pm-ablation", "pm-inr10-cl", "inr-5-10-20", "trm", "smoke"}


def test_verdict_rule_is_the_verdicts_module():
    # the rule itself is tested in tests/test_verdicts.py; the leaderboard must use exactly it
    from harness.report import verdicts

    assert lb.verdict is verdicts.verdict and lb.VERDICT_RULE is verdicts.VERDICT_RULE


# --------------------------------------------------------------------------------------------------------------------
# Shipped data


def test_shipped_tables_validate_against_registries():
    names = lb.validate_all()
    assert REQUIRED_TABLES <= set(names)
    listed = dict(lb.list_tables())
    assert REQUIRED_TABLES <= set(listed) and all(listed.values())
    from harness.data.spec import available_benchmarks
    from harness.method.registry import method_names

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
    assert value[("cifar100-10", "pm")] == 88.45  # A_last (92.89, likely A_avg, is in pm-seed with its note)
    assert value[("imagenet-r-10", "pm")] == 79.95
    assert all(e.metric == "a_last" for e in merging.entries)
    # split differences are shown, not called the same protocol: CUB (official vs PILOT folder), ImageNet-A (seeded)
    assert {e.benchmark for e in merging.entries if not e.same_protocol} == {"cub200-10", "imagenet-a-10"}
    assert all("split differs" in e.note for e in merging.entries if not e.same_protocol)
    ablation = lb.resolve_table("pm-ablation")
    per_module = [e for e in ablation.entries if "per-module" in e.published.id]
    assert len(per_module) == 3 and all(e.overrides.get("method.per_module") is True for e in per_module)
    assert {e.method for e in ablation.entries} >= {"lora-m", "pm-gauss", "pm", "seq-lora"}
    assert all(not e.same_protocol for e in lb.resolve_table("trm").entries)  # indicative only


def test_one_set_of_runs_has_one_published_number():
    """No two rows of a table judge the same cells against different numbers, unless one is marked a conflict
    (rows with another protocol draw no verdict: InfLoRA's two logged runs of one setting may share cells)."""
    for name in lb.available_tables():
        judged: dict[tuple, set] = {}
        for e in lb.resolve_table(name).entries:
            if e.cells and e.same_protocol and not e.conflict:
                key = (e.metric, tuple(c.run_id() for c in e.cells))
                judged.setdefault(key, set()).add(e.published.value if e.published else None)
        assert all(len(v) == 1 for v in judged.values()), (name, [v for v in judged.values() if len(v) > 1])
    ablation = {e.published.id: e for e in lb.resolve_table("pm-ablation").entries}
    g10, p10 = ablation["pm-alpha/imagenet-r-10/global/a_last"], ablation["pm-ablation/imagenet-r-10/lora-pm/a_last"]
    assert [c.run_id() for c in g10.cells] == [c.run_id() for c in p10.cells]  # same setting in clmerge …
    assert g10.conflict and not p10.conflict  # … so the global-α number is shown as the paper's conflict


def test_pm_seed_table_has_the_eight_numbers():
    entries = lb.resolve_table("pm-seed").entries
    got = {(e.benchmark, e.metric, e.published.value) for e in entries}
    assert got == {("imagenet-r-10", "a_avg", 85.29), ("cub200-10", "a_last", 78.29), ("imagenet-a-10", "a_last", 56.57),
                   ("imagenet-a-20", "a_last", 52.27), ("cifar100-10", "a_last", 92.89), ("imagenet-r-20", "a_avg", 82.77),
                   ("imagenet-r-5", "a_last", 81.47), ("domainnet-10", "a_last", 84.35)}
    assert all(e.published.provenance == "aggregator" and e.method == "pm" and e.cells for e in entries)
    note = {e.benchmark: e.published.note for e in entries}
    assert "88.45" in note["cifar100-10"] and "84.71" in note["domainnet-10"]
    assert "checked against the paper" in note["imagenet-r-20"] and "checked against the paper" in note["imagenet-r-5"]


def test_published_numbers_have_provenance_and_no_memory_numbers():
    rows = lb.load_published()
    assert len(rows) > 150
    assert {r.provenance for r in rows.values()} == {"paper-text", "official-log", "secondary-note", "aggregator"}
    values = {(r.method, r.benchmark, r.value) for r in rows.values()}
    # numbers the notes mark as recalled from memory ([mem]) must not be stored
    for excluded in [("inflora", "cifar100-10", 86.51), ("inflora", "imagenet-r-10", 75.65), ("inflora", "imagenet-r-5", 77.52)]:
        assert excluded not in values
    # the seed's unverified list is stored only as what it is: aggregator numbers, never as paper text
    seed = [r for r in rows.values() if r.id.startswith("pm-seed/")]
    assert len(seed) == 8 and {r.provenance for r in seed} == {"aggregator"}
    # P&M's own rows are not claimed to be checked against SD-LoRA's table image (they are not in it)
    for r in rows.values():
        if r.id.startswith("pm-inr10-cl/") and "/lora" in r.id:
            assert "checked against SD-LoRA" not in r.note, r.id
    assert not any(r.value in (69.29, 71.32, 75.45, 91.53) for r in rows.values())  # CODA-Prompt / SLCA [mem]


# --------------------------------------------------------------------------------------------------------------------
# A private reference directory: synthetic published numbers and one table over the bundled digits benchmark

PUBLISHED = [
    # id, benchmark, method, method_as_published, metric, value, std, provenance
    ("syn/seq", "split-digits", "seq-lora", "LoRA", "a_last", "50.00", "", "paper-text"),
    ("syn/seq-avg", "split-digits", "seq-lora", "LoRA", "a_avg", "70.00", "", "paper-text"),
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
      - syn/seq-avg
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
    assert [e.implemented for e in resolved.entries] == [True, True, True, True, False, False]
    assert "planned" in by_id["syn/planned"].missing and "no counterpart" in by_id["syn/paper"].missing
    cells = lb.table_cells("syn")
    assert len(cells) == 9 and {c.backbone.preset for c in cells} == {"vit-micro-test"}
    assert len(lb.table_cells("syn", seeds=2)) == 6

    seq = [0.48, 0.50, 0.53]
    for cfg, v in zip(by_id["syn/seq"].cells, seq):
        atomic_write_json(run_dir(cfg, root) / "result.json", _result(cfg, v, v + 0.1))
    joint = [0.90, 0.91]  # only 2 of 3 seeds finished …
    jcells = by_id["syn/joint"].cells
    for cfg, v in zip(jcells, joint):
        atomic_write_json(run_dir(cfg, root) / "result.json", _result(cfg, v - 0.05, v))
    # … and the third holds a result.json written for another cell (a copied directory): reported, not counted
    atomic_write_json(run_dir(jcells[2], root) / "result.json", _result(jcells[0], 0.10, 0.10))
    pcells = by_id["syn/pm"].cells
    atomic_write_json(run_dir(pcells[0], root) / "result.json", _result(pcells[0], 0.75, 0.8))
    atomic_write_json(run_dir(pcells[1], root) / "error.json",  # a failed cell: its error's first line is shown
                      {"run_id": pcells[1].run_id(), "error": "RuntimeError: CUDA out of memory\nsecond line", "traceback": ""})

    md, paths = lb.write_report("syn", root)
    s_mean, s_std = 100 * np.mean(seq), 100 * np.std(seq, ddof=1)  # 50.33 ± 2.52
    s_bound = 2 * s_std / np.sqrt(3)  # 2.91 > Δ 0.33: reproduced (2σ would be 5.03)
    assert (f"| split-digits | LoRA | seq-lora | A_last | {s_mean:.2f} ± {s_std:.2f} (3) | 50.00 | {s_mean - 50:+.2f} | "
            f"{s_bound:.2f} | reproduced |") in md
    # A_avg 60.33 vs 70.00: Δ −9.67 > 2.91 → differs
    assert f"| split-digits | LoRA | seq-lora | A_avg | {s_mean + 10:.2f} ± {s_std:.2f} (3) | 70.00 | {s_mean - 60:+.2f} |" in md
    assert "| differs |" in md
    j_mean, j_std = 100 * np.mean(joint), 100 * np.std(joint, ddof=1)  # 90.50 ± 0.71: 2 of 3 seeds → no verdict
    assert f"| split-digits | Joint | joint | A_avg | {j_mean:.2f} ± {j_std:.2f} (2/3) | 88.0 ± 0.5 | +2.50 |" in md
    assert "| partial (2/3) |" in md
    assert f"not counted (result does not match its cell): {run_dir(jcells[2], root) / 'result.json'}" in md
    assert "| split-digits | P&M | pm† | A_last | 75.00 (1/3) | 70.00 | +5.00 | 1.00 | failed (1/3) |" in md
    assert f"failed: split-digits × pm × seed 1 (run {pcells[1].run_id()}): RuntimeError: CUDA out of memory" in md
    assert "second line" not in md and "clmerge status syn" in md
    assert "| split-digits | Future | future-merge | A_last | – | 60.0 | – | – | no implementation |" in md
    assert "| cifar100-10 | L2P & Co_1 | – | A_last | – | 71.26 ± 0.44 | – | – | no implementation |" in md
    assert "first remark" in md and "second remark" in md and "another split" in md
    assert "† `pm` is (partly) a reconstruction" in md and "seq-lora†" not in md
    # footer: environment from the runs
    assert "torch 9.9.9" in md and "cuda:0 (NVIDIA H200)" in md and "seeds: 0, 1, 2" in md and "abcdef012345" in md

    rows = {r["ref"]: r for r in csv.DictReader(open(paths["csv"]))}
    assert float(rows["syn/seq"]["ours_mean"]) == pytest.approx(s_mean, abs=1e-3)
    assert float(rows["syn/seq"]["ours_std"]) == pytest.approx(s_std, abs=1e-3)
    assert float(rows["syn/seq"]["bound"]) == pytest.approx(s_bound, abs=1e-3)
    assert (rows["syn/seq"]["n"], rows["syn/seq"]["cells"], rows["syn/seq"]["verdict"]) == ("3", "3", "reproduced")
    assert (rows["syn/seq-avg"]["verdict"], rows["syn/joint"]["n"], rows["syn/joint"]["verdict"]) == ("differs", "2", "partial")
    assert rows["syn/joint"]["n_published"] == "3" and rows["syn/pm"]["verdict"] == "failed"
    assert rows["syn/pm"]["reconstruction"] and not rows["syn/seq"]["reconstruction"]
    assert rows["syn/joint"]["provenance"] == "official-log" and rows["syn/pm"]["same_protocol"] == "False"
    for key in ("markdown", "csv", "latex", "plot_delta", "plot_curves", "matrix:split-digits:LoRA"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    assert paths["plot_delta"].read_bytes()[:4] == b"\x89PNG"
    assert not list(paths["plot_curves"].parent.glob(".*.tmp*"))  # no temporary files left behind


def test_report_with_no_runs_shows_published_and_not_run(tmp_path, monkeypatch):
    _reference(tmp_path, monkeypatch, SYN_TABLE)
    md, paths = lb.write_report("syn", tmp_path / "results", plots=False)
    body = [ln for ln in md.splitlines() if ln.startswith("| split-digits") or ln.startswith("| cifar100")]
    assert len(body) == 6
    for line, value in zip(body, ["50.00", "70.00", "88.0 ± 0.5", "70.00", "60.0", "71.26 ± 0.44"]):
        assert f"| {value} |" in line
    assert [ln.split(" | ")[8] for ln in body] == ["not run"] * 4 + ["no implementation"] * 2
    assert "no finished runs" in md and set(paths) == {"markdown", "csv", "latex"}


def test_shipped_report_without_runs(tmp_path):
    md, _ = lb.write_report("pm-merging", tmp_path / "results", plots=False)
    for value in ("65.72", "76.90", "75.09", "79.34", "79.95", "88.45", "78.29", "84.71"):
        assert f"| {value} |" in md
    body = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| benchmark")]
    assert len(body) == 30
    assert all(ln.split(" | ")[8] in ("not run", "no implementation") for ln in body)
    md, _ = lb.write_report("smoke", tmp_path / "results", plots=False)
    body = [ln for ln in md.splitlines() if ln.startswith("| split-digits")]
    assert body and all(ln.endswith("| 0/3 | not run |") for ln in body)


def test_grid_table_report_over_synthetic_runs(tmp_path):
    root = tmp_path / "results"
    cells = [c for c in lb.table_cells("smoke") if c.method == "seq-lora"]
    from harness.dispatch.grid import expand, load_grid

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
    assert paths["heatmap:a_last"].read_bytes()[:4] == b"\x89PNG"
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
    # the paper's shape: one row per method, (benchmark, metric) × (ours, published) columns
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert len(rows) == 5  # LoRA, Joint, P&M, Future, L2P & Co_1
    columns = 1 + 2 * 3  # split-digits A_last, split-digits A_avg, cifar100-10 A_last
    assert all(len(re.findall(r"(?<!\\)&", ln)) == columns - 1 for ln in rows)
    assert re.search(r"^LoRA & -- & 50\.00.* & -- & 70\.00", body, re.M)
    assert r"P\&M$^\dagger$" in tex and r"$^\dagger$ \texttt{pm} is (partly) a reconstruction" in tex  # marked + footnote
    assert "first remark" in tex and r"\textsuperscript{" in tex  # notes as in the Markdown
    from harness.report.table_render import tex_escape

    assert tex_escape(r"a_b & 50% #1 {x} ~^\ ±") == (
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


def test_results_are_checked_against_their_cell(tmp_path):
    cells = [c for c in lb.table_cells("smoke") if c.method == "seq-lora"]
    root = tmp_path / "results"
    good = _result(cells[0], 0.5, 0.6)
    wrong_id = {**_result(cells[1], 0.5, 0.6), "run_id": cells[0].run_id()}  # its config is right, its run_id is not
    wrong_cfg = _result(cells[2], 0.5, 0.6)
    wrong_cfg["config"] = {**wrong_cfg["config"], "seed": 7}  # right run_id, config of another run
    for cfg, r in zip(cells, (good, wrong_id, wrong_cfg)):
        atomic_write_json(run_dir(cfg, root) / "result.json", r)
    found = lb.load_cell_results(cells, root)
    assert list(found.results) == [cells[0].run_id()]
    assert "run_id" in found.mismatched[cells[1].run_id()]
    assert "config hashes to" in found.mismatched[cells[2].run_id()]
