"""The domain-incremental scenario: specs, streams, heads, metrics, and the method contract in domain-il for every
registered method (new methods are included automatically).

Two rotated-digit domains (0° and 90°) on the 2-block test ViT, one epoch per task, written as test specs into a
private datasets folder.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness.config import ExecConfig
from harness.core.errors import ConfigError
from harness.core.paths import datasets_dir, project_root
from harness.method.registry import get_method, method_names
from harness.resolve import resolve
from harness.train.checkpoints import load_checkpoint
from harness.train.setup import build
from harness.train.trainer import run_tasks
from tests.conftest import FAST

QUIET = ExecConfig(progress=False)


def dil_spec(name: str, head: str, **extra) -> dict:
    spec = {
        "name": name, "description": "test: two rotated-digit domains", "scenario": "domain-il",
        "source": {"kind": "sklearn-digits", "rotations": [0, 90]},
        "domains": {"order": ["rot0", "rot90"], "read": "source"}, "head": head, "num_classes": 10,
        "held_out": {"test_fraction": 0.2, "seed": 0},
        "image": {"size": 16, "channels": 1, "mean": [0.5], "std": [0.5]}, "backbone": "vit-tiny-digits-mnist",
    }
    spec.update(extra)
    return spec


@pytest.fixture
def specs(tmp_path, monkeypatch):
    """A datasets folder holding the real specs and the test specs dil-shared and dil-probe."""
    folder = tmp_path / "datasets"
    shutil.copytree(datasets_dir(), folder)
    for name, head in (("dil-shared", "shared"), ("dil-probe", "pretraining-probe")):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(dil_spec(name, head)))
    monkeypatch.setattr("harness.data.spec.datasets_dir", lambda: folder)
    return folder


@pytest.fixture(params=method_names())
def method(request):
    return request.param


def _load(tmp_path, spec: dict):
    from harness.data.spec import load_spec

    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(str(path))


# ---- specs ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"scenario": "task-il"}, "invalid value 'task-il'; valid: class-il, domain-il"),
    ({"domains": None}, "missing required key 'domains'"),
    ({"split": {"num_tasks": 2}}, "one task per domain"),
    ({"head": "per-task"}, "valid heads: shared, pretraining-probe"),
    ({"domains": {"order": ["rot0", "rot45"]}}, "the source's domains are ['rot0', 'rot90']"),
    ({"domains": {"order": ["rot0", "rot0"]}}, "distinct domains"),
    ({"domains": {"order": ["rot0", "rot90"], "read": "file-prefix"}}, "file-prefix applies to image benchmarks"),
    ({"class_order": "permutation", "order_seed": 1}, "leave class_order natural"),
    ({"scenario": "class-il", "split": {"num_tasks": 2}}, "only a domain-il benchmark has domains"),
])
def test_bad_domain_specs_are_refused_with_what_is_valid(tmp_path, change, message):
    spec = dil_spec("bad", "shared")
    spec.update(change)
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, spec)
    assert message in str(err.value)


def test_class_il_specs_default_to_per_task_heads_and_refuse_a_shared_one(tmp_path):
    from harness.data.spec import load_spec

    assert load_spec("split-digits").head_kind() == "per-task" and load_spec("split-digits").scenario == "class-il"
    spec = yaml.safe_load((datasets_dir() / "split-digits.yaml").read_text())
    spec.update(name="x", head="shared")
    with pytest.raises(ConfigError, match="one head per task"):
        _load(tmp_path, spec)


def test_magmax_dil_specs_order_domains_as_the_magmax_code():
    """DOMAINS[default_domain_order] of the MagMax code's ImageNet-R and DomainNet datasets (src/datasets/*.py)."""
    from harness.data.spec import load_spec

    imr = ["deviantart", "cartoon", "misc", "embroidery", "videogame", "painting", "art", "graphic", "origami",
           "tattoo", "toy", "sticker", "graffiti", "sculpture", "sketch"]
    dn = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
    r, d = load_spec("imagenet-r-dil"), load_spec("domainnet-dil")
    assert r.domains.order == [imr[i] for i in (9, 14, 7, 5, 6, 8, 13, 12, 1, 2, 10, 3, 4, 11, 0)]
    assert d.domains.order == [dn[i] for i in (0, 5, 4, 1, 3, 2)]
    assert (r.num_tasks(), d.num_tasks(), r.num_classes, d.num_classes) == (15, 6, 200, 345)
    assert r.head_kind() == d.head_kind() == "shared" and r.domains.read == "file-prefix" and d.domains.read == "source"


def test_prepared_caches_give_sample_domains_from_file_names_or_the_manifest(tmp_path):
    from harness.data.cache import _attach_domains, sample_domain
    from harness.data.source_data import SourceData
    from harness.data.spec import load_spec

    assert sample_domain("n01443537/art_0.jpg", "file-prefix") == "art"
    assert sample_domain("train/n01443537/deviantart_12.jpg", "file-prefix") == "deviantart"
    assert sample_domain("n01443537/noprefix.jpg", "file-prefix") is None
    data = SourceData(None, np.zeros(3), None, np.zeros(2), [], "")
    manifest = {"train": {"keys": ["a/sketch_1.jpg", "b/toy_2.jpg", "a/toy_3.jpg"]}, "test": {"keys": ["a/sketch_4.jpg", "b/art_5.jpg"]}}
    _attach_domains(data, manifest, load_spec("imagenet-r-dil"), tmp_path)
    assert data.domain_names == ["art", "sketch", "toy"]
    assert data.train_domains.tolist() == [1, 2, 2] and data.test_domains.tolist() == [1, 0]
    manifest = {"train": {"keys": ["x"], "domains": ["real"]}, "test": {"keys": ["y"], "domains": ["clipart"]}}
    _attach_domains(data, manifest, load_spec("domainnet-dil"), tmp_path)
    assert data.domain_names == ["clipart", "real"] and data.train_domains.tolist() == [1]
    with pytest.raises(ConfigError, match="records no sample domains"):
        _attach_domains(data, {"train": {"keys": ["x"]}, "test": {"keys": ["y"]}}, load_spec("domainnet-dil"), tmp_path)
    with pytest.raises(ConfigError, match="1 samples have no domain"):
        _attach_domains(data, {"train": {"keys": ["a/x.jpg"]}, "test": {"keys": []}}, load_spec("imagenet-r-dil"), tmp_path)


# ---- run ids -------------------------------------------------------------------------------------------------------
def test_scenario_is_in_the_run_id_only_for_domain_il(specs):
    ref = json.loads((project_root() / "results/reference/grids/smoke.json").read_text())
    cell = next(c for c in ref["cells"] if c["method"] == "seq-lora" and c["seed"] == 0)
    cfg = resolve("split-digits", "seq-lora", seed=0, overrides={"train.epochs": 6})
    assert "scenario" not in cfg.to_dict() and cfg.run_id() == cell["run_id"]  # class-il run ids unchanged
    dil = resolve("dil-shared", "seq-lora", seed=0)
    assert dil.to_dict()["scenario"] == "domain-il" and dil.scenario == "domain-il"
    with pytest.raises(ConfigError, match="unknown key 'scenario'"):
        resolve("split-digits", "seq-lora", overrides={"scenario": "domain-il"})  # the spec's, never a --set key


# ---- data and stream -----------------------------------------------------------------------------------------------
def test_rotated_digits_are_the_upright_images_rotated(specs):
    from harness.data.protocol import run_spec
    from harness.data.sources import load_source, rotated_digits
    from harness.data.stream import stream_of

    spec = run_spec(resolve("dil-shared", "seq-lora"))
    data = load_source(spec)
    stream = stream_of(spec, None, data)
    t0, t1 = stream.tasks
    assert (t0.domain, t1.domain) == ("rot0", "rot90") and t0.classes == t1.classes == tuple(range(10))
    assert t0.offset == t1.offset == 0 and stream.seen_classes(0) == stream.seen_classes(1) == 10
    assert len(t0.train_indices) == len(t1.train_indices) == 1438 and len(t0.test_indices) == 359
    assert not set(t0.train_indices) & set(t1.train_indices)
    assert np.array_equal(data.train_labels[t0.train_indices], data.train_labels[t1.train_indices])
    up = data.train_images[t0.train_indices].float()
    turned = data.train_images[t1.train_indices].float()
    # 90° counter-clockwise: bilinear sampling lands on pixel centres, so the rotation is exact up to rounding
    assert (turned - torch.rot90(up, 1, dims=(2, 3))).abs().max() <= 1.0
    # hand case: one bright pixel at row 0, column 0 of an 8×8 image lands at the bottom-left after 90° (CCW)
    img = np.zeros((1, 1, 8, 8), dtype=np.uint8)
    img[0, 0, 0, 0] = 255
    r = rotated_digits(img, 90, 8)[0, 0]
    assert r[7, 0] == 255 and int(r.sum()) == 255
    assert stream.record()["scenario"] == "domain-il" and [t["domain"] for t in stream.record()["tasks"]] == ["rot0", "rot90"]


def test_a_domain_missing_from_the_data_is_named(specs):
    from harness.data.protocol import run_spec
    from harness.data.sources import load_source
    from harness.data.stream import build_stream

    spec = run_spec(resolve("dil-shared", "seq-lora"))
    data = load_source(spec)
    with pytest.raises(ConfigError, match="domain 'rot90' of domains.order is not in the data; its domains are: rot0"):
        build_stream(spec, None, data.train_labels, data.test_labels, (["rot0"], data.train_domains, data.test_domains))


# ---- the pre-training probe ----------------------------------------------------------------------------------------
def test_linear_probe_fits_separable_data_and_matches_the_optimality_condition():
    from harness.model.probe_head import fit_linear_probe

    g = torch.Generator().manual_seed(0)
    feats = torch.cat([torch.randn(50, 4, generator=g) + 3 * torch.eye(4)[c] for c in range(3)])
    labels = torch.arange(3).repeat_interleave(50)
    w, b = fit_linear_probe(feats, labels, 3, l2=1e-2)
    assert ((feats.double() @ w.T + b).argmax(1) == labels).double().mean() > 0.9
    # stationarity of (1/N) Σ CE + (λ/2)‖W‖²: (1/N) Σ (softmax − onehot) fᵀ + λW = 0 and Σ (softmax − onehot) = 0
    p = torch.softmax(feats.double() @ w.T + b, 1) - torch.nn.functional.one_hot(labels, 3).double()
    assert torch.allclose(p.T @ feats.double() / len(feats) + 1e-2 * w, torch.zeros_like(w), atol=1e-6)
    assert torch.allclose(p.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6)


# ---- every method in domain-il -------------------------------------------------------------------------------------
def _refused(method: str) -> None:
    """A method that does not run in domain-il says so, and `methods: all` leaves it out with a note."""
    from harness.dispatch.grid import GridSpec, expand

    cls = get_method(method)
    assert cls.scenario_note, f"{method} runs in {cls.scenarios} only and must say why (scenario_note)"
    with pytest.raises(ConfigError) as err:
        resolve("dil-shared", method)
    assert "domain-il" in str(err.value) and cls.scenario_note in str(err.value)
    cells = expand(GridSpec(name="g", benchmarks=["dil-shared"], methods="all", seeds=[0]))
    assert method not in {c.method for c in cells}
    with pytest.raises(ConfigError, match="cannot run on 'dil-shared'"):
        expand(GridSpec(name="g", benchmarks=["dil-shared"], methods=[method], seeds=[0]))


def test_every_method_runs_two_domains_with_one_shared_head_and_resumes_exactly(method, specs, tmp_path):
    if "domain-il" not in get_method(method).scenarios:
        _refused(method)
        return
    cfg = resolve("dil-shared", method, seed=0, overrides=FAST)
    s = build(cfg, QUIET)
    ckpt = tmp_path / "ckpt.pt"
    state = run_tasks(s, QUIET, checkpoint=ckpt)
    assert [len(r) for r in state.acc] == [1, 2] and all(0.0 <= a <= 1.0 for row in state.acc for a in row)
    assert state.task_aware == [], "domain-il records no task-aware accuracy (one head spans every task)"
    model = s.method.eval_model(s.model)
    assert len(model.heads.heads) == 1 and model.heads.num_classes == 10
    x, _ = next(s.test_bank.iterate(s.stream.tasks[0].test_indices, 32))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (len(x), 10) and torch.isfinite(logits).all()
    # resumed after the first domain == uninterrupted (bit-exact on CPU): weights, head, method state, accuracies
    half = tmp_path / "half.pt"
    run_tasks(build(cfg, QUIET), QUIET, checkpoint=half, stop_after=1)
    resumed = build(cfg, QUIET)
    again = run_tasks(resumed, QUIET, checkpoint=half)
    assert again.acc == state.acc
    for n, w in s.model.merged_weights().items():
        assert torch.equal(resumed.model.merged_weights()[n], w), f"{method}: merged {n} differs after a resume"
    assert torch.equal(resumed.model.heads.heads[0].weight, s.model.heads.heads[0].weight)
    fresh = build(cfg, QUIET)
    load_checkpoint(ckpt, fresh)
    with torch.no_grad():
        assert torch.equal(fresh.method.eval_model(fresh.model)(x), logits)


def test_every_method_leaves_the_frozen_probe_head_untouched(method, specs):
    if "domain-il" not in get_method(method).scenarios:
        pytest.skip(f"{method} does not run in domain-il (checked in the shared-head contract)")
    cfg = resolve("dil-probe", method, seed=0, overrides=FAST)
    s = build(cfg, QUIET)
    head = {k: v.clone() for k, v in s.model.heads.heads[0].state_dict().items()}
    run_tasks(s, QUIET)
    model = s.method.eval_model(s.model)
    assert len(model.heads.heads) == 1 and not any(p.requires_grad for p in model.heads.parameters())
    for k, v in model.heads.heads[0].state_dict().items():
        assert torch.equal(v, head[k]), f"{method} changed the frozen head's {k}"


# ---- results -------------------------------------------------------------------------------------------------------
def test_result_has_no_task_aware_accuracy_and_records_domains_and_head(specs, results):
    from harness.train.run import execute

    cfg = resolve("dil-probe", "avg", seed=0, overrides=FAST)
    out = execute(cfg, QUIET)
    r = json.loads((Path(out.run_dir) / "result.json").read_text())
    assert r["config"]["scenario"] == "domain-il" and r["task_aware_matrix"] is None
    assert math.isnan(r["metrics"]["task_aware_a_last"])
    assert r["stream"]["scenario"] == "domain-il" and [t["domain"] for t in r["stream"]["tasks"]] == ["rot0", "rot90"]
    assert r["head"]["head"] == "pretraining-probe" and 0.0 < r["head"]["fit_accuracy"] <= 1.0
    n = r["num_test"]
    last = r["acc_matrix"][-1]
    assert r["metrics"]["a_last"] == pytest.approx(sum(a * k for a, k in zip(last, n)) / sum(n))


# ---- the embedded benchmark's grids and design variant (docs/benchmarks.md, "Rotated digits") ---------------------
def test_rules_grid_ranks_rules_on_the_unchanged_rotated_digits_spec():
    """rotated-digits-rules adds merging rules to the same spec and protocol: its seq-lora, avg and pm cells are the
    rotated-digits grid's cells (same run ids, so a finished grid is reused), and the spec's defaults are those the
    docs' numbers were measured with."""
    from harness.dispatch.grid import expand, load_grid

    rules, base = expand(load_grid("rotated-digits-rules")), expand(load_grid("rotated-digits"))
    assert {c.benchmark for c in rules} == {"rotated-digits"} and {c.seed for c in rules} == {0, 1, 2, 3, 4}
    assert sorted({c.method for c in rules}) == sorted(
        ["seq-lora", "avg", "pm", "magmax", "ties", "task-arith", "fisher-merge"]) and len(rules) == 35
    shared = {c.run_id() for c in base if c.method in ("seq-lora", "avg", "pm")}
    assert len(shared) == 15 and shared <= {c.run_id() for c in rules}
    for c in rules:
        d = c.to_dict()
        assert d["scenario"] == "domain-il" and d["train"]["epochs"] == 4 and d["train"]["lr_lora"] == 0.005


def test_eight_rotation_variant_is_the_same_digits_turned_by_45_degree_steps():
    from harness.data.protocol import run_spec
    from harness.data.sources import load_source
    from harness.data.stream import stream_of

    spec = run_spec(resolve("rotated-digits-8", "avg"))
    data = load_source(spec)
    tasks = stream_of(spec, None, data).tasks
    assert [t.domain for t in tasks] == [f"rot{a}" for a in range(0, 360, 45)]
    assert all(t.classes == tuple(range(10)) and len(t.train_indices) == 1438 for t in tasks)
    up, quarter = (data.train_images[t.train_indices].float() for t in (tasks[0], tasks[2]))
    assert (quarter - torch.rot90(up, 1, dims=(2, 3))).abs().max() <= 1.0  # rot90 is the upright images turned 90°
    base = load_source(run_spec(resolve("rotated-digits", "avg")))
    assert base.split_hash == data.split_hash  # the same writers' digits in train and test as rotated-digits


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("grid, changed", [
    ("epsilon-1", {"pm": {"method_params.epsilon": 1.0}}),
    ("epochs-8", {"avg": {"train.epochs": 8}, "pm": {"train.epochs": 8}}),
    ("tasks-8", {"avg": {"benchmark": "rotated-digits-8"}, "pm": {"benchmark": "rotated-digits-8"}}),
    ("lambda", {"magmax": {"method_params.lam": 1.0}, "task-arith": {"method_params.lam": 0.2}}),
])
def test_each_design_grid_changes_one_knob_of_rotated_digits(grid, changed):
    """The design measurements of docs/benchmarks.md vary one knob at a time from the rotated-digits protocol: every
    cell equals the same method and seed on rotated-digits but for the named keys (unnamed methods: not at all)."""
    from harness.dispatch.grid import expand, load_grid

    cells = expand(load_grid(str(project_root() / "benchmarks/rotated-digits-design" / f"{grid}.yaml")))
    assert {c.seed for c in cells} == {0, 1, 2}
    for c in cells:
        base = _flat(resolve("rotated-digits", c.method, seed=c.seed).to_dict())
        cell = _flat(c.to_dict())
        diff = {k: cell.get(k) for k in set(base) | set(cell) if base.get(k) != cell.get(k)}
        assert diff == changed.get(c.method, {}), (grid, c.method)
