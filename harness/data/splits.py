"""Train/test splits of real benchmarks: the seeded stratified split for sources without an official one, external
split files for reproducing a given paper's split, and the hash that names a split.

A split is two lists of sample keys (`<class>/<file>`, see harness/data/image_sources.py). Its SHA-256 is taken over the
sorted keys, so it does not depend on where the images came from (folder or Hub) or on listing order; every prepared
cache and every run records it.

External split files (`clmerge prepare --split-file`, repeatable), research/benchmarks.md §3 and §8.1:
* a folder with `train/<class>/<file>` and `test/<class>/<file>` (the PILOT/APER-distributed ImageNet-R/A and CUB
  folders): its file names define the split of the source's images;
* a text list, one `relative/path [label]` per line (VPT-NSP `tools/*_train.txt`, DomainNet's official lists), or a
  CODA-Prompt YAML (`data: [paths]`, `targets: [...]`): which split it holds is read from its file name (contains
  `train`, or `test`/`val`);
* a manifest written by `clmerge prepare` (JSON with `train` and `test` key lists).
A listed path matches a source image when their last components agree (`<class>/<file>`, or more when that is
ambiguous), so a list written for `data/imagenet-r/<wnid>/<file>` matches any copy of ImageNet-R. Labels in a list
file are ignored: class ids are the sorted class names (the id spaces of code bases differ, benchmarks.md §8.2).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import yaml

from harness.core.errors import ConfigError
from harness.data.image_sources import Sample, _class_tree, _read_list


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: per class, a `test_fraction` share (rounded) goes to test. Sorted ids out."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        ids = np.flatnonzero(labels == c)
        ids = ids[rng.permutation(len(ids))]
        n_test = int(round(test_fraction * len(ids)))
        test.append(ids[:n_test])
        train.append(ids[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split_sha256(train_keys: list[str], test_keys: list[str]) -> str:
    """SHA-256 over 'train\\n' + sorted train keys + 'test\\n' + sorted test keys, one per line."""
    h = hashlib.sha256()
    for name, keys in (("train", train_keys), ("test", test_keys)):
        h.update(f"{name}\n".encode())
        for k in sorted(keys):
            h.update(k.encode() + b"\n")
    return h.hexdigest()


def stratified_keys(samples: list[Sample], test_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded stratified split of samples (`stratified_split` over their class ids): samples sorted
    by key, per class (sorted names) a NumPy-legacy `RandomState(seed)` permutation, round(test_fraction · n) to test.
    A pure function of the key list: the same files give the same split on any machine. Both lists sorted by key."""
    items = sorted(samples, key=lambda s: s.key)
    names = sorted({s.class_name for s in items})
    index = {n: i for i, n in enumerate(names)}
    train, test = stratified_split(np.array([index[s.class_name] for s in items], dtype=np.int64), test_fraction, seed)
    return [items[i] for i in train], [items[i] for i in test]


def _role(path: Path) -> str:
    name = path.name.lower()
    if "train" in name:
        return "train"
    if "test" in name or "val" in name:
        return "test"
    raise ConfigError(
        f"split file {path}: cannot tell whether it lists train or test images; its name must contain 'train', "
        "'test' or 'val' (or give a folder with train/ and test/, or a manifest with both)"
    )


def read_split_files(files: list[str | Path]) -> dict[str, list[str]]:
    """Listed paths per split from the split files (formats in the module docstring)."""
    out: dict[str, list[str]] = {"train": [], "test": []}
    for f in map(Path, files):
        if not f.exists():
            raise ConfigError(f"split file {f} does not exist")
        if f.is_dir():
            if not ((f / "train").is_dir() and (f / "test").is_dir()):
                raise ConfigError(f"split folder {f}: expected train/ and test/ class folders inside")
            for role in out:
                out[role] += [s.key.split("/", 1)[1] for s in _class_tree(f / role, f"{role}/")]
            continue
        if f.suffix == ".json":
            data = json.loads(f.read_text())
            if not isinstance(data, dict) or not {"train", "test"} <= set(data):
                raise ConfigError(f"split manifest {f}: expected a JSON object with 'train' and 'test' key lists")
            for role in out:
                out[role] += [str(k) for k in data[role]]
            continue
        role = _role(f)
        if f.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(f.read_text())
            if not isinstance(data, dict) or "data" not in data:
                raise ConfigError(f"split file {f}: expected a YAML mapping with a 'data' list of paths (CODA-Prompt format)")
            out[role] += [str(p) for p in data["data"]]
        else:
            out[role] += _read_list(f)
    for role, keys in out.items():
        if not keys:
            raise ConfigError(f"split files {', '.join(map(str, files))}: no {role} images listed")
    return out


def match_listed(listed: list[str], samples: list[Sample], role: str) -> list[Sample]:
    """The source samples named by `listed` paths, matched on their last path components (≥ 2)."""
    index: dict[str, list[Sample]] = {}
    depth = max((len(s.key.split("/")) for s in samples), default=2)
    for s in samples:
        parts = s.key.split("/")
        for k in range(2, min(depth, len(parts)) + 1):
            index.setdefault("/".join(parts[-k:]), []).append(s)
    out, missing = [], []
    for p in listed:
        parts = p.replace("\\", "/").strip("/").split("/")
        hit = None
        for k in range(2, len(parts) + 1):
            cands = index.get("/".join(parts[-k:]))
            if cands is None:
                break
            if len(cands) == 1:
                hit = cands[0]
                break
        if hit is None:
            missing.append(p)
        else:
            out.append(hit)
    if missing:
        raise ConfigError(
            f"split files list {len(missing)} {role} image(s) not found in the source, e.g. {missing[:3]}; "
            "check that the split file belongs to this dataset (paths are matched on <class>/<file>)"
        )
    if len({s.key for s in out}) != len(out):
        raise ConfigError(f"split files list some {role} images twice")
    return sorted(out, key=lambda s: s.key)
