"""List the samples of a real image benchmark from where a user has it: a local folder or a Hugging Face Hub dataset.

A listing is what `clmerge prepare` decodes: for each split, the samples as (key, class name, reference), where
the key is a stable, source-independent name (`<class>/<file>` for folders, `<domain>/<class>/<file>` for
DomainNet) used by split manifests and hashes, and the reference says how to read the bytes (a file path, or a
row of a Hub dataset). Class ids are never taken from the source: they are the sorted class names (the
`torchvision.datasets.ImageFolder` convention every PILOT-family code base uses, research/benchmarks.md §1.1), so
the same benchmark gets the same ids from a folder or from the Hub.

Folder layouts recognised (research/benchmarks.md §2–6), checked in this order:
* CUB-200-2011 as distributed: `images.txt`, `train_test_split.txt`, `images/<class>/<file>` (official split);
* DomainNet as distributed: `<domain>_train.txt` / `<domain>_test.txt` lists and `<domain>/<class>/<file>`;
* a train/test tree `train/<class>/<file>` + `test/<class>/<file>` (PILOT/APER-distributed folders);
* a flat class tree `<class>/<file>` (no split: the benchmark's seeded stratified split applies).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.core.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class Sample:
    key: str  # stable name, e.g. "n01443537/art_0.jpg"
    class_name: str
    ref: str | int  # file path, or row index of the Hub split
    domain: str | None = None
    part: str = "train"  # which split of the source it was listed from (Hub rows are read from that split)


@dataclass
class Listing:
    """Samples per split; `test` is None when the source has no official split."""

    source: str  # the folder path or Hub id, as given
    layout: str  # how it was read (e.g. "cub-official", "hub:uoft-cs/cifar100")
    train: list[Sample]
    test: list[Sample] | None
    reader: Callable[[Sample], bytes | str] = field(repr=False, default=lambda s: str(s.ref))
    # reader(sample) → encoded bytes or a file path that PIL can open

    def class_names(self) -> list[str]:
        names = {s.class_name for s in self.train} | {s.class_name for s in self.test or []}
        return sorted(names)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_tree(root: Path, prefix: str = "") -> list[Sample]:
    """`root/<class>/<file>` (files in nested folders below a class are included), sorted by key."""
    out = []
    for cls in sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith(".")):
        base = root / cls
        for dirpath, dirnames, files in os.walk(base):
            dirnames.sort()
            for f in sorted(files):
                if _is_image(f):
                    p = Path(dirpath) / f
                    out.append(Sample(key=prefix + p.relative_to(root).as_posix(), class_name=cls, ref=str(p)))
    return out


def _read_list(path: Path) -> list[str]:
    """Non-empty lines' first field (a relative image path) of a `path [label]` list file."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts:
            out.append(parts[0])
    return out


def _cub(root: Path) -> Listing:
    images = dict(line.split() for line in (root / "images.txt").read_text().splitlines() if line.strip())
    is_train = dict(line.split() for line in (root / "train_test_split.txt").read_text().splitlines() if line.strip())
    train, test = [], []
    for img_id, rel in sorted(images.items(), key=lambda kv: int(kv[0])):
        if img_id not in is_train:
            raise ConfigError(f"{root}/train_test_split.txt: image id {img_id} ({rel}) has no train/test entry")
        s = Sample(key=rel, class_name=rel.split("/")[0], ref=str(root / "images" / rel), part="train" if is_train[img_id] == "1" else "test")
        (train if is_train[img_id] == "1" else test).append(s)
    return Listing(str(root), "cub-official", sorted(train, key=lambda s: s.key), sorted(test, key=lambda s: s.key))


def _domainnet(root: Path, domains: list[str] | None) -> Listing:
    found = sorted(p.name[: -len("_train.txt")] for p in root.glob("*_train.txt"))
    use = domains or found
    missing = [d for d in use if not (root / f"{d}_train.txt").exists() or not (root / f"{d}_test.txt").exists()]
    if missing:
        raise ConfigError(
            f"{root}: DomainNet split lists missing for domain(s) {missing} (expected <domain>_train.txt and "
            f"<domain>_test.txt from the official download); found domains: {found or 'none'}"
        )
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for d in use:
        for split in splits:
            for rel in _read_list(root / f"{d}_{split}.txt"):
                parts = rel.split("/")
                if len(parts) < 3:
                    raise ConfigError(f"{root}/{d}_{split}.txt: entry {rel!r} is not <domain>/<class>/<file>")
                splits[split].append(Sample(key=rel, class_name=parts[-2], ref=str(root / rel), domain=parts[0], part=split))
    return Listing(str(root), f"domainnet-official:{','.join(use)}", splits["train"], splits["test"])


def list_folder(root: Path, domains: list[str] | None = None) -> Listing:
    if not root.is_dir():
        raise ConfigError(f"source folder {root} does not exist (give a folder `root/<class>/<image>` or a Hub id)")
    if (root / "images.txt").exists() and (root / "train_test_split.txt").exists():
        return _cub(root)
    if any(root.glob("*_train.txt")):
        return _domainnet(root, domains)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return Listing(str(root), "train-test-folders", _class_tree(root / "train", "train/"), _class_tree(root / "test", "test/"))
    samples = _class_tree(root)
    if not samples:
        raise ConfigError(
            f"{root}: no images found; expected one of: <class>/<image> folders, train/ and test/ class folders, "
            "a CUB-200-2011 folder (images.txt, train_test_split.txt, images/) or a DomainNet folder (<domain>_train.txt)"
        )
    return Listing(str(root), "class-folders", samples, None)


@dataclass
class HubColumns:
    """Which columns of a Hub dataset hold the image, the class and (DomainNet) the domain; None → inferred."""

    image: str | None = None
    label: str | None = None
    domain: str | None = None


def _infer_columns(features, cols: HubColumns, where: str) -> HubColumns:
    from datasets import ClassLabel, Image

    # configured columns that this copy lacks (another upload of the dataset) fall back to inference
    image = cols.image if cols.image in features else next((k for k, f in features.items() if isinstance(f, Image)), None)
    label = cols.label if cols.label in features else next(
        (k for k in ("fine_label", "label", "y", "wnid", "category") if k in features),
        next((k for k, f in features.items() if isinstance(f, ClassLabel)), None),
    )
    for what, name in (("image", image), ("label", label)):
        if name is None or name not in features:
            raise ConfigError(f"{where}: no {what} column found (columns: {', '.join(features)}); set source.hub_columns.{what}")
    if cols.domain is not None and cols.domain not in features:
        raise ConfigError(f"{where}: domain column {cols.domain!r} not in columns {', '.join(features)}")
    return HubColumns(image, label, cols.domain)


def _image_paths(ds, column: str) -> list[str | None]:
    """The `path` field of an undecoded Image column, read from Arrow without materialising the image bytes."""
    import pyarrow.compute as pc

    table = getattr(ds.data, "table", ds.data)
    if getattr(ds, "_indices", None) is None and column in table.column_names:
        return pc.struct_field(table.column(column), "path").to_pylist()
    return [(v or {}).get("path") for v in ds.select_columns([column])[column]]  # rare: an indices mapping


def is_hub_folder(root: Path) -> bool:
    """A local copy of a Hub dataset repository (parquet/arrow files, e.g. `data/train-00000-of-00001.parquet`)."""
    return not any(_is_image(p.name) for p in root.iterdir() if p.is_file()) and any(
        p.suffix in (".parquet", ".arrow") for p in root.rglob("*") if p.is_file()
    )


def list_hub(
    dataset_id: str,
    splits: dict[str, str | None],
    cols: HubColumns,
    config: str | None = None,
    domains: list[str] | None = None,
    load: Callable | None = None,
) -> Listing:
    """A Hub dataset (or a local folder in Hub layout, e.g. `data/train-*.parquet`) through `datasets.load_dataset`.

    `splits` maps train/test to the dataset's split names (test None: no official split). Images are listed, not
    decoded: bytes are read lazily, one row at a time, by the returned reader.
    """
    from datasets import ClassLabel, Image

    load = load or (lambda: __import__("datasets").load_dataset(dataset_id, config))
    where = f"Hub dataset {dataset_id!r}"
    try:
        dsd = load()
    except Exception as exc:  # network, auth, missing offline cache: say what to do
        raise ConfigError(
            f"{where}: could not load it ({type(exc).__name__}: {exc}). Check the id, your network or HF token, or "
            "pass --source with a local folder instead"
        ) from exc
    parts: dict[str, list[Sample]] = {}
    tables = {}
    for role, split_name in splits.items():
        if split_name is None:
            continue
        if split_name not in dsd and role in dsd:  # another copy may name its splits plainly
            split_name = role
        if split_name not in dsd:
            raise ConfigError(f"{where}: has no split {split_name!r} (it has: {', '.join(dsd)})")
        ds = dsd[split_name]
        c = _infer_columns(ds.features, cols, f"{where}[{split_name}]")
        ds = ds.cast_column(c.image, Image(decode=False))
        feat = ds.features[c.label]
        names = feat.names if isinstance(feat, ClassLabel) else None
        labels = ds[c.label]
        doms = ds[c.domain] if c.domain else [None] * len(labels)
        paths = _image_paths(ds, c.image)
        out = []
        for i, (lab, dom, path) in enumerate(zip(labels, doms, paths)):
            if domains and dom not in domains:
                continue
            cname = names[lab] if names is not None else str(lab)
            base = os.path.basename(path) if path else f"{split_name}-{i:07d}"
            prefix = f"{dom}/" if dom else ""
            out.append(Sample(key=f"{prefix}{cname}/{base}", class_name=cname, ref=i, domain=dom, part=role))
        parts[role] = sorted(out, key=lambda s: (s.key, s.ref))
        tables[role] = (ds, c.image)
    keys = [s.key for s in parts["train"]]
    if len(set(keys)) != len(keys):  # file names repeat within a class: fall back to row numbers (stable per revision)
        for role in parts:
            parts[role] = [Sample(f"{s.key}#{s.ref}", s.class_name, s.ref, s.domain, s.part) for s in parts[role]]

    def reader(sample: Sample) -> bytes | str:
        ds, col = tables[sample.part]
        value = ds[int(sample.ref)][col]
        if value.get("bytes"):
            return value["bytes"]
        return value["path"]

    return Listing(dataset_id, f"hub:{dataset_id}", parts["train"], parts.get("test"), reader)
