import numpy as np
import pytest
import yaml

from harness.core.errors import ConfigError
from harness.data.sources import load_source
from harness.data.spec import load_spec
from harness.data.splits import stratified_split
from harness.data.stream import build_stream, class_order


def test_pilot_order_seed_1993():
    spec = load_spec("split-digits")
    spec.num_classes, spec.class_order, spec.order_seed = 100, "permutation", 1993
    order = class_order(spec, None)
    assert order[:10] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    assert sorted(order) == list(range(100))


def test_order_does_not_touch_global_numpy_rng():
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    spec = load_spec("split-digits")
    spec.class_order, spec.order_seed = "permutation", 1993
    class_order(spec, 7)
    assert np.random.rand() == expected


def test_stream_is_pure_and_remaps_labels():
    spec = load_spec("split-digits")
    spec.class_order, spec.order_seed = "permutation", 3
    data = load_source(spec)
    a = build_stream(spec, None, data.train_labels, data.test_labels)
    b = build_stream(spec, None, data.train_labels, data.test_labels)
    assert a.order == b.order and all(np.array_equal(x.train_indices, y.train_indices) for x, y in zip(a.tasks, b.tasks))
    assert len(a.tasks) == 5 and all(t.num_classes == 2 for t in a.tasks)
    for t in a.tasks:
        # every sample of task t has a global label in [offset, offset + n)
        glob = a.remap(data.train_labels[t.train_indices])
        assert glob.min() == t.offset and glob.max() == t.offset + 1
        assert set(data.train_labels[t.train_indices]) == set(t.classes)
    # all samples covered exactly once
    all_idx = np.concatenate([t.train_indices for t in a.tasks])
    assert sorted(all_idx) == list(range(len(data.train_labels)))
    other = build_stream(spec, 4, data.train_labels, data.test_labels)
    assert other.order != a.order  # the order seed is its own axis


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(4), 10)
    tr, te = stratified_split(labels, 0.2, seed=0)
    assert len(set(tr) & set(te)) == 0 and len(tr) + len(te) == 40
    assert np.bincount(labels[te]).tolist() == [2, 2, 2, 2]
    tr2, te2 = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(te, te2)


def _write(tmp_path, data) -> str:
    p = tmp_path / "bench.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def _base():
    return yaml.safe_load(open(load_spec("split-digits").file))


def test_unknown_key_names_file_key_and_valid_keys(tmp_path):
    data = _base()
    data["num_task"] = 5
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    msg = str(e.value)
    assert path in msg and "'num_task'" in msg and "num_classes" in msg


def test_missing_key(tmp_path):
    data = _base()
    del data["image"]
    with pytest.raises(ConfigError, match="missing required key 'image'"):
        load_spec(_write(tmp_path, data))


def test_nested_unknown_key_and_bad_values(tmp_path):
    data = _base()
    data["split"] = {"num_tasks": 3}
    with pytest.raises(ConfigError, match="do not split into 3 equal tasks"):
        load_spec(_write(tmp_path, data))
    data["split"] = {"increments": [4, 3, 2]}
    with pytest.raises(ConfigError, match="cover 9 classes"):
        load_spec(_write(tmp_path, data))
    data = _base()
    data["train"]["epoch"] = 3
    with pytest.raises(ConfigError, match="unknown key 'epoch'.*epochs"):
        load_spec(_write(tmp_path, data))
    data = _base()
    data["source"]["kind"] = "cifar"
    with pytest.raises(ConfigError, match="unknown source kind 'cifar'.*sklearn-digits"):
        load_spec(_write(tmp_path, data))


def test_explicit_increments(tmp_path):
    data = _base()
    data["split"] = {"increments": [4, 3, 3]}
    spec = load_spec(_write(tmp_path, data))
    d = load_source(spec)
    s = build_stream(spec, None, d.train_labels, d.test_labels)
    assert [t.num_classes for t in s.tasks] == [4, 3, 3] and [t.offset for t in s.tasks] == [0, 4, 7]


def test_unknown_benchmark():
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'; valid: .*split-digits"):
        load_spec("nope")
