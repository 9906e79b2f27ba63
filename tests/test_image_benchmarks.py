"""Real benchmarks on generated data in their sources' real layouts: listing, splits, `prepare` → cache, errors,
class orders, and training through the skeleton."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from harness.config import ExecConfig
from harness.core.errors import ConfigError
from harness.data.cache import open_prepared
from harness.data.prepare import decode_image, prepare
from harness.data.protocol import run_spec
from harness.data.spec import load_spec
from harness.data.splits import split_sha256
from harness.data.stream import class_order
from harness.resolve import resolve
from tests import imagegen as gen

QUIET = ExecConfig(progress=False, device="cpu")
SILENT = {"log": lambda _: None}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLMERGE_RESULTS", str(tmp_path / "results"))
    return tmp_path / "cache"


# ---- Hub format (CIFAR-100: uoft-cs/cifar100 columns) -----------------------------------------------------------

def _cifar_hub(per_class_train: int = 2, per_class_test: int = 1):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    names = load_spec("cifar100-10").source.class_names
    feats = Features({"img": Image(), "fine_label": ClassLabel(names=names), "coarse_label": ClassLabel(num_classes=20)})

    def split(n, offset):
        rows = {"img": [], "fine_label": [], "coarse_label": []}
        for c in range(100):
            for k in range(n):
                rows["img"].append({"bytes": gen.png_bytes(offset + c * 10 + k), "path": None})
                rows["fine_label"].append(c)
                rows["coarse_label"].append(c % 20)
        return Dataset.from_dict(rows, features=feats)

    return DatasetDict(train=split(per_class_train, 0), test=split(per_class_test, 5000))


def test_cifar_from_hub_format_round_trip_is_bit_exact(cache):
    dsd = _cifar_hub()
    res = prepare(load_spec("cifar100-10"), load_hub=lambda: dsd, **SILENT)
    data = open_prepared(load_spec("cifar100-10"))
    assert data.train_images.shape == (200, 3, 32, 32) and data.test_images.shape == (100, 3, 32, 32)
    assert res.manifest["layout"] == "hub:uoft-cs/cifar100" and res.manifest["split_rule"].startswith("official")
    # every cached image is exactly the source's pixels (32×32 stored natively: no resampling)
    train_keys = res.manifest["train"]["keys"]
    for i in (0, 57, 199):
        row = int(train_keys[i].rsplit("-", 1)[1])
        expected = gen.pixels(int(dsd["train"][row]["fine_label"]) * 10 + row % 2, 32, 32).transpose(2, 0, 1)
        assert np.array_equal(data.train_images[i], expected)
        assert data.train_labels[i] == dsd["train"][row]["fine_label"]  # ClassLabel names are sorted: ids agree

    # the same dataset as a downloaded Hub repository (parquet shards), read through datasets.load_dataset
    repo = cache.parent / "cifar100-repo"
    (repo / "data").mkdir(parents=True)
    for split in ("train", "test"):
        dsd[split].to_parquet(str(repo / "data" / f"{split}-00000-of-00001.parquet"))
    again = prepare(load_spec("cifar100-10"), source=str(repo), force=True, **SILENT).manifest
    assert again["split_sha256"] == res.manifest["split_sha256"] and again["layout"] == f"hub:{repo}"
    assert np.array_equal(open_prepared(load_spec("cifar100-10")).test_images, data.test_images)


# ---- folders: ImageNet-R (wnids, no split), CUB archive, DomainNet archive, PILOT train/test ---------------------

def test_imagenet_r_folder_gets_a_stable_stratified_split(cache, tmp_path):
    src = gen.class_folders(tmp_path / "imagenet-r", gen.wnids(200), per_class=5)
    spec = load_spec("imagenet-r-10")
    first = prepare(spec, source=str(src), storage_size=16, **SILENT).manifest
    assert first["train"]["count"] == 800 and first["test"]["count"] == 200  # 4/1 per class
    assert first["split_sha256"] == split_sha256(first["train"]["keys"], first["test"]["keys"])
    # the same files elsewhere (copied, listed in another order) give the same split and the same images
    other = tmp_path / "copy"
    shutil.copytree(src, other)
    again = prepare(spec, source=str(other), storage_size=16, force=True, **SILENT).manifest
    assert again["split_sha256"] == first["split_sha256"] and again["train"]["keys"] == first["train"]["keys"]
    # per class exactly one test image, chosen by the seeded rule
    test_classes = [k.split("/")[0] for k in first["test"]["keys"]]
    assert sorted(set(test_classes)) == gen.wnids(200) and len(test_classes) == 200


def test_external_split_files_pilot_folder_and_path_lists(cache, tmp_path):
    classes = gen.wnids(200)
    src = gen.class_folders(tmp_path / "imagenet-r", classes, per_class=3)
    spec = load_spec("imagenet-r-5")
    # (1) a PILOT-style train/test folder naming the split: image 0 of each class is test
    pilot = tmp_path / "pilot"
    for c in classes:
        for k in range(3):
            gen.save(pilot / ("test" if k == 0 else "train") / c / f"art_{k}.png", seed=0)
    m1 = prepare(spec, source=str(src), split_files=[str(pilot)], storage_size=16, **SILENT).manifest
    assert all(k.endswith("art_0.png") for k in m1["test"]["keys"]) and m1["train"]["count"] == 400
    # (2) CODA/VPT-style path lists with another prefix and labels (ignored): the same split
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "inr_train.txt").write_text(
        "\n".join(f"data/imagenet-r/{c}/art_{k}.png {i}" for i, c in enumerate(classes) for k in (1, 2)))
    (tmp_path / "lists" / "inr_test.txt").write_text("\n".join(f"data/imagenet-r/{c}/art_0.png {i}" for i, c in enumerate(classes)))
    files = [str(tmp_path / "lists" / "inr_train.txt"), str(tmp_path / "lists" / "inr_test.txt")]
    m2 = prepare(spec, source=str(src), split_files=files, storage_size=16, force=True, **SILENT).manifest
    assert m2["split_sha256"] == m1["split_sha256"]
    # a list naming a file the source lacks fails with the path
    (tmp_path / "lists" / "inr_test.txt").write_text("data/imagenet-r/n99999999/missing.png 0\n")
    with pytest.raises(ConfigError, match="missing.png"):
        prepare(spec, source=str(src), split_files=files, storage_size=16, force=True, **SILENT)


def test_cub_archive_uses_the_official_split(cache, tmp_path):
    src = gen.cub_archive(tmp_path / "CUB_200_2011")
    m = prepare(load_spec("cub200-10"), source=str(src), storage_size=16, **SILENT).manifest
    assert m["layout"] == "cub-official" and m["train"]["count"] == 400 and m["test"]["count"] == 200
    assert m["class_names"][0] == "001.Bird_0" and m["class_names"][-1] == "200.Bird_199"
    data = open_prepared(load_spec("cub200-10"))
    assert data.train_images.shape[1:] == (3, 16, 16) and data.train_labels.max() == 199


def test_domainnet_archive_domains_and_class_subset(cache, tmp_path, monkeypatch):
    classes = [f"class_{i:03d}" for i in range(345)]
    gen.datasets_copy(tmp_path, monkeypatch, {"domainnet-5.yaml": {}, "domainnet-200-5.yaml": {}})
    for name in ("domainnet-5", "domainnet-200-5"):  # two domains only, to keep the test small
        path = tmp_path / "datasets" / f"{name}.yaml"
        data = yaml.safe_load(path.read_text())
        data["source"]["domains"] = ["clipart", "sketch"]
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    src = gen.domainnet_archive(tmp_path / "domainnet", ["clipart", "sketch", "real"], classes)
    m = prepare(load_spec("domainnet-5"), source=str(src), storage_size=16, **SILENT).manifest
    assert m["train"]["count"] == 690 and set(m["train"]["domains"]) == {"clipart", "sketch"}
    # DN*: 345 classes in the source, 200 wanted → a clear message, then the class list
    with pytest.raises(ConfigError, match="--classes"):
        prepare(load_spec("domainnet-200-5"), source=str(src), storage_size=16, **SILENT)
    subset = tmp_path / "dn200.txt"
    subset.write_text("\n".join(classes[145:]))
    m = prepare(load_spec("domainnet-200-5"), source=str(src), classes_file=str(subset), storage_size=16, **SILENT).manifest
    assert m["class_names"] == sorted(classes[145:]) and m["test"]["count"] == 400


# ---- errors -----------------------------------------------------------------------------------------------------

def test_missing_source_wrong_classes_and_missing_cache_say_what_to_do(cache, tmp_path):
    spec = load_spec("imagenet-r-10")
    with pytest.raises(ConfigError, match="does not exist|no such folder"):
        prepare(spec, source=str(tmp_path / "nowhere"), **SILENT)
    few = gen.class_folders(tmp_path / "few", gen.wnids(199), per_class=2)
    with pytest.raises(ConfigError, match="199 classes but imagenet-r-10 needs 200"):
        prepare(spec, source=str(few), storage_size=16, **SILENT)
    named = gen.class_folders(tmp_path / "named", [f"bird{i}" for i in range(200)], per_class=2)
    with pytest.raises(ConfigError, match="do not match"):
        prepare(spec, source=str(named), storage_size=16, **SILENT)
    cfg = resolve("imagenet-r-10", "seq-lora", overrides={"backbone.preset": "vit-micro-rgb-test"})
    from harness.train.setup import build

    with pytest.raises(ConfigError, match="clmerge prepare imagenet-r-10"):
        build(cfg, QUIET)


def test_corrupt_images_are_reported_by_path_then_resumed_or_skipped(cache, tmp_path):
    src = gen.class_folders(tmp_path / "inr", gen.wnids(200), per_class=3, ext="jpg")
    bad = src / gen.wnids(200)[7] / "art_1.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    junk = src / gen.wnids(200)[9] / "art_2.jpg"
    junk.write_bytes(b"not an image")
    spec = load_spec("imagenet-r-5")
    with pytest.raises(ConfigError) as err:
        prepare(spec, source=str(src), storage_size=16, **SILENT)
    assert str(bad) in str(err.value) and str(junk) in str(err.value) and "--skip-corrupt" in str(err.value)
    assert not (cache / "data" / "imagenet-r" / "manifest.json").exists()  # nothing published as complete
    # fixed: the rerun resumes (only the two are decoded again) and completes
    gen.save(bad, seed=1, fmt="JPEG")
    gen.save(junk, seed=2, fmt="JPEG")
    logs = []
    m = prepare(spec, source=str(src), storage_size=16, log=logs.append).manifest
    assert any("resuming" in line for line in logs) and m["train"]["count"] + m["test"]["count"] == 600
    # skip mode: left out and listed
    junk.write_bytes(b"broken again")
    m = prepare(spec, source=str(src), storage_size=16, force=True, skip_corrupt=True, **SILENT).manifest
    assert [s["path"] for s in m["skipped"]] == [str(junk)] and m["train"]["count"] + m["test"]["count"] == 599
    data = open_prepared(spec)
    assert len(data.train_labels) + len(data.test_labels) == 599


def test_decode_image_resizes_shorter_side_and_centre_crops(tmp_path):
    p = gen.save(tmp_path / "a.png", seed=3, size=(20, 40))  # 20 high, 40 wide
    out = decode_image(str(p), 10)
    assert out.shape == (3, 10, 10) and out.dtype == np.uint8
    from PIL import Image

    ref = Image.open(p).convert("RGB").resize((20, 10), Image.Resampling.BICUBIC).crop((5, 0, 15, 10))
    assert np.array_equal(out, np.asarray(ref).transpose(2, 0, 1))


# ---- class orders of the code bases ----------------------------------------------------------------------------

def test_class_orders_match_the_code_bases():
    spec = load_spec("cifar100-10")
    pilot = class_order(run_spec(resolve("cifar100-10", "seq-lora", overrides={"protocol": "pilot"})), None)
    assert pilot[:10] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]  # PILOT/iCaRL seed 1993 (benchmarks.md §1.1)
    inr = run_spec(resolve("imagenet-r-10", "seq-lora", overrides={"protocol": "pilot"}))
    assert class_order(inr, None)[:10] == [168, 136, 51, 9, 183, 101, 171, 99, 42, 159]
    import dataclasses

    coda = dataclasses.replace(spec, class_order="python-shuffle", order_seed=1)
    assert class_order(coda, None)[:5] == [53, 37, 65, 51, 4]  # CODA-Prompt seed 1 (benchmarks.md §1.2)
    assert class_order(coda, 2)[:4] == [0, 76, 61, 63]
    pm = run_spec(resolve("cifar100-10", "seq-lora"))  # P&M: PCG64 shuffle of the sorted ids, seed 0
    ids = np.arange(100)
    np.random.Generator(np.random.PCG64(0)).shuffle(ids)
    assert class_order(pm, None) == ids.tolist() and sorted(class_order(pm, 5)) == list(range(100))
    inflora = run_spec(resolve("cifar100-10", "seq-lora", overrides={"protocol": "inflora"}))
    assert class_order(inflora, None) == list(range(100))


def test_protocols_set_transforms_order_and_training(tmp_path):
    pm = resolve("cifar100-10", "seq-lora")
    spec = run_spec(pm)
    assert pm.protocol == "pm" and pm.train.temperature == 30.0 and pm.train.epoch_repeats == 10
    assert spec.train_transform.autoaugment == "cifar10" and spec.test_transform.resize == 224 and spec.image.mean == [0.5] * 3
    dn = resolve("domainnet-5", "seq-lora")
    assert dn.train.epochs == 5
    pilot = run_spec(resolve("imagenet-a-10", "seq-lora", overrides={"protocol": "pilot"}))
    assert pilot.train_transform.scale == [0.05, 1.0] and pilot.train_transform.flip and pilot.image.std == [1.0] * 3
    inflora = run_spec(resolve("cub200-10", "seq-lora", overrides={"protocol": "inflora"}))
    assert inflora.train_transform.scale == [0.05, 1.0]  # CUB: PILOT-style in InfLoRA's code
    with pytest.raises(ConfigError, match="unknown protocol|valid"):
        resolve("cifar100-10", "seq-lora", overrides={"protocol": "nope"})
    with pytest.raises(ConfigError, match="image benchmarks"):
        resolve("split-digits", "seq-lora", overrides={"protocol": "pm"})


# ---- training through the skeleton -----------------------------------------------------------------------------

def test_prepared_benchmark_trains_and_records_protocol(cache, tmp_path, monkeypatch):
    """imagenet-r-5 from a generated wnid folder, the tiny protocol (AutoAugment + RRC + flip at 16 px), two methods;
    a rerun of the same cell gives identical numbers (augmentation seeded from the run config)."""
    gen.datasets_copy(tmp_path, monkeypatch, {"protocols/tiny.yaml": gen.TINY_PROTOCOL})
    src = gen.class_folders(tmp_path / "inr", gen.wnids(200), per_class=3, ext="jpg")
    prepare(load_spec("imagenet-r-5"), source=str(src), storage_size=20, **SILENT)
    from harness.train.setup import build
    from harness.train.trainer import run_tasks

    over = {"protocol": "tiny", "backbone.preset": "vit-micro-rgb-test", "train.epochs": 1}
    cfg = resolve("imagenet-r-5", "pm", overrides=over)
    state = run_tasks(build(cfg, QUIET), QUIET)
    assert [len(r) for r in state.acc] == [1, 2, 3, 4, 5]
    again = run_tasks(build(cfg, QUIET), QUIET)
    assert again.acc == state.acc and again.method_records == state.method_records
    from pathlib import Path

    from harness.train.run import execute

    out = execute(resolve("imagenet-r-5", "seq-lora", overrides=over), QUIET)
    result = json.loads((Path(out.run_dir) / "result.json").read_text())
    assert result["config"]["protocol"] == "tiny" and len(result["acc_matrix"]) == 5
    assert result["stream"]["split_hash"] == json.loads((cache / "data" / "imagenet-r" / "manifest.json").read_text())["split_sha256"]
    # one decode serves imagenet-r-10 and -20 too (source.cache: imagenet-r): prepared, same split, no second decode
    from harness.data.cache import is_prepared
    from harness.dispatch import preflight

    ten = resolve("imagenet-r-10", "seq-lora", overrides=over)
    assert is_prepared(load_spec("imagenet-r-20")) and preflight.check([ten]).ok
    assert build(ten, QUIET).data.split_hash == result["stream"]["split_hash"]
    with pytest.raises(ConfigError, match="imagenet-r already exists .*source.cache: imagenet-r"):
        prepare(load_spec("imagenet-r-10"), source=str(src), storage_size=20, **SILENT)


def test_benchmarks_sharing_a_cache_agree_on_what_prepare_reads():
    """A shared cache (source.cache) is only valid across specs with the same source, classes and held-out split."""
    from harness.data.spec import available_benchmarks

    groups: dict[str, list] = {}
    for name in available_benchmarks():
        spec = load_spec(name)
        if spec.source.cache:
            groups.setdefault(spec.source.cache, []).append(spec)
    assert sorted(groups) == ["domainnet", "imagenet-a", "imagenet-r"] and len(groups["imagenet-r"]) == 3
    for specs in groups.values():
        facts = {repr((s.source, s.held_out, s.num_classes, s.style)) for s in specs}
        assert len(facts) == 1, [s.name for s in specs]
