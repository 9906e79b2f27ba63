"""`clmerge prepare`: decode a real benchmark's images once into a memory-mapped uint8 cache.

source (folder or Hub id) → listing (harness/data/image_sources.py) → class subset and checks → split (official, external
split files, or the benchmark's seeded stratified split; harness/data/splits.py) → decode with PIL in a thread pool,
shorter side resized to S (bicubic, antialiased) and centre-cropped to S×S → `<cache>/data/<benchmark>/`:

    train_images.npy, test_images.npy   uint8 [N, 3, S, S] (np.load(mmap_mode="r") reads them without loading)
    train_labels.npy, test_labels.npy   int64 class ids (= index in the sorted class names)
    manifest.json                       benchmark, source, layout, class names, split keys and SHA-256, sizes,
                                        storage rule, skipped images, clmerge/PIL versions, time taken

Why S×S after a centre crop: the test views of every protocol (Resize 256 + CentreCrop 224, or Resize 224) are exact
crops/resizes of it, batches are fixed-size arrays, and a 256² cache of ImageNet-R takes 5.9 GB. The train-time
RandomResizedCrop then samples from the central square rather than the full image — the one deviation from the
per-sample PIL pipelines (documented in docs/benchmarks.md, "Storage rule").

Work goes to `<benchmark>.partial/` first, with a `done` mask flushed after every chunk: an interrupted prepare resumes
where it stopped (same source and split), and the finished cache appears under its name only when complete (a rename),
so a half-written cache is never read. Unreadable or truncated images are collected with their paths and reported
together at the end (nothing is written as complete); `skip_corrupt` leaves them out and lists them in the manifest.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from harness.core.errors import ConfigError
from harness.core.io import atomic_write_text
from harness.core.paths import cache_dir, datasets_dir
from harness.data.cache import cache_name
from harness.data.image_sources import HubColumns, Listing, Sample, is_hub_folder, list_folder, list_hub
from harness.data.spec import BenchmarkSpec
from harness.data.splits import match_listed, read_split_files, split_sha256, stratified_keys

CHUNK = 512


@dataclass
class PrepareResult:
    path: Path
    manifest: dict


def resolve_source(spec: BenchmarkSpec, source: str | None, load_hub: Callable | None = None) -> Listing:
    """A local folder if `source` is an existing directory, else a Hub id (default: the spec's `hub.id`)."""
    src = spec.source
    hub = src.hub
    if source is not None and Path(source).expanduser().exists():
        root = Path(source).expanduser().resolve()
        if root.is_dir() and is_hub_folder(root):  # a downloaded Hub repository: read it as the Hub id would be
            source = str(root)
        else:
            return list_folder(root, src.domains)
    if source is None and hub is None:
        raise ConfigError(f"{spec.name}: no default Hub dataset; give --source PATH (a local image folder)")
    if source is not None and not Path(source).exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise ConfigError(f"--source {source}: no such folder (a Hub id looks like owner/name)")
    hub_id = source or hub.id
    same = hub is not None and hub_id == hub.id
    # Another id or a local copy is taken to hold the same dataset: the spec's split and column names are tried
    # first, plain train/test and inferred columns where it lacks them.
    return list_hub(
        hub_id,
        {"train": hub.train_split, "test": hub.test_split} if hub else {"train": "train", "test": "test"},
        hub.columns if hub else HubColumns(),
        config=hub.config if same else None,
        domains=src.domains,
        load=load_hub,
    )


def _class_subset(spec: BenchmarkSpec, classes_file: str | None) -> list[str] | None:
    f = classes_file or spec.source.classes_file
    if f is None:
        return None
    path = Path(f) if Path(f).is_absolute() or Path(f).exists() else datasets_dir() / f
    if not path.exists():
        raise ConfigError(f"class list {f} does not exist (one class name per line)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ConfigError(f"class list {path}: a class is listed twice")
    return names


def check_classes(spec: BenchmarkSpec, names: list[str], where: str) -> None:
    """The source's classes must be the benchmark's: count, naming pattern, and the names when known."""
    if len(names) != spec.num_classes:
        hint = (" — give the class subset with --classes FILE (one name per line)" if len(names) > spec.num_classes else "")
        raise ConfigError(
            f"{where}: has {len(names)} classes but {spec.name} needs {spec.num_classes}{hint}; first classes found: "
            f"{', '.join(names[:5])}"
        )
    if spec.source.class_pattern:
        bad = [n for n in names if not re.fullmatch(spec.source.class_pattern, n)]
        if bad:
            raise ConfigError(
                f"{where}: class names {bad[:3]} do not match {spec.source.class_pattern!r} expected for {spec.name} "
                "— is this the right dataset?"
            )
    if spec.source.class_names is not None and names != sorted(spec.source.class_names):
        diff = sorted(set(names) ^ set(spec.source.class_names))
        raise ConfigError(f"{where}: classes differ from {spec.name}'s ({len(diff)} differ, e.g. {diff[:3]})")


def plan_split(spec: BenchmarkSpec, listing: Listing, split_files: list[str] | None) -> tuple[list[Sample], list[Sample], str]:
    """(train, test, rule): the split's samples and a description of where it came from."""
    if split_files:
        listed = read_split_files(split_files)
        every = listing.train + (listing.test or [])
        rule = "external split files: " + ", ".join(os.path.basename(str(f)) for f in split_files)
        return match_listed(listed["train"], every, "train"), match_listed(listed["test"], every, "test"), rule
    if listing.test is not None:
        return listing.train, listing.test, f"official ({listing.layout})"
    held = spec.held_out
    if held is None:
        raise ConfigError(
            f"{listing.source}: has no train/test split and {spec.name} defines no held_out split; give --split-file"
        )
    tr, te = stratified_keys(listing.train, held.test_fraction, held.seed)
    return tr, te, f"seeded stratified split (test_fraction {held.test_fraction}, seed {held.seed}; harness/data/splits.py)"


def decode_image(data: bytes | str, size: int) -> np.ndarray:
    """Encoded image (bytes or path) → uint8 [3, S, S]: RGB, shorter side resized to S (bicubic, antialiased),
    centre crop. Raises on unreadable or truncated files (PIL's load() checks the whole stream)."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # decode at a reduced DCT scale ≥ S: same result class, much faster
        im.load()
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _open_arrays(part: Path, n: int, size: int, fresh: bool) -> tuple[np.ndarray, np.ndarray]:
    img_path, done_path = part.with_suffix(".images.npy"), part.with_suffix(".done.npy")
    if fresh or not img_path.exists():
        images = np.lib.format.open_memmap(img_path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        np.save(done_path, np.zeros(n, dtype=bool))
    else:
        images = np.load(img_path, mmap_mode="r+")
    return images, np.load(done_path)


def _decode_split(
    listing: Listing, role: str, samples: list[Sample], part: Path, size: int, workers: int, fresh: bool,
    progress: Callable[[int], None],
) -> list[dict]:
    """Decode `samples` into `<part>.images.npy`, skipping those already done; returns the failures."""
    images, done = _open_arrays(part, len(samples), size, fresh)
    failures: list[dict] = []
    def work(i: int) -> tuple[int, np.ndarray | None, str | None]:
        s = samples[i]
        try:
            return i, decode_image(listing.reader(s), size), None
        except Exception as exc:  # noqa: BLE001 — any decoder error is a bad image, reported by path
            return i, None, f"{type(exc).__name__}: {exc}"

    todo = np.flatnonzero(~done)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            for i, arr, err in pool.map(work, chunk):
                if err is None:
                    images[i] = arr
                    done[i] = True
                else:
                    failures.append({"key": samples[i].key, "path": str(samples[i].ref), "error": err})
            images.flush()
            np.save(part.with_suffix(".done.npy"), done)  # after the flush: done never runs ahead of the data
            progress(len(chunk))
    return failures


def prepare(
    spec: BenchmarkSpec,
    source: str | None = None,
    split_files: list[str] | None = None,
    classes_file: str | None = None,
    storage_size: int | None = None,
    workers: int | None = None,
    skip_corrupt: bool = False,
    force: bool = False,
    load_hub: Callable | None = None,
    log: Callable[[str], None] = print,
) -> PrepareResult:
    """Prepare `spec`'s cache (see the module docstring); returns its folder and manifest."""
    if spec.source.kind != "images":
        raise ConfigError(f"{spec.name}: source kind {spec.source.kind!r} needs no preparation")
    out = cache_dir() / "data" / cache_name(spec)
    if out.exists() and not force:
        shared = f"; it serves every benchmark with source.cache: {spec.source.cache}" if spec.source.cache else ""
        raise ConfigError(f"{out} already exists ({spec.name} is prepared{shared}); add --force to prepare it again")
    size = storage_size or spec.source.storage_size
    t0 = time.perf_counter()
    listing = resolve_source(spec, source, load_hub)
    subset = _class_subset(spec, classes_file)
    if subset is not None:
        missing = sorted(set(subset) - set(listing.class_names()))
        if missing:
            raise ConfigError(f"class list: {len(missing)} classes are not in the source, e.g. {missing[:3]}")
        keep = set(subset)
        listing.train = [s for s in listing.train if s.class_name in keep]
        listing.test = None if listing.test is None else [s for s in listing.test if s.class_name in keep]
    train, test, rule = plan_split(spec, listing, split_files)
    names = sorted({s.class_name for s in train} | {s.class_name for s in test})
    check_classes(spec, names, f"source {listing.source}")
    missing_test = sorted({s.class_name for s in train} - {s.class_name for s in test})
    if missing_test:
        raise ConfigError(f"split: classes {missing_test[:3]} have no test images")
    sha = split_sha256([s.key for s in train], [s.key for s in test])
    plan = {"benchmark": cache_name(spec), "source": listing.source, "split_sha256": sha, "storage_size": size, "classes": names}
    part_dir = out.with_name(out.name + ".partial")
    plan_file = part_dir / "plan.json"
    fresh = not (plan_file.exists() and json.loads(plan_file.read_text()) == plan)
    if fresh:
        shutil.rmtree(part_dir, ignore_errors=True)
        part_dir.mkdir(parents=True)
        atomic_write_text(plan_file, json.dumps(plan))
    else:
        log(f"resuming the interrupted prepare in {part_dir}")
    from tqdm.auto import tqdm

    failures: dict[str, list[dict]] = {}
    with tqdm(total=len(train) + len(test), desc=f"prepare {spec.name}", unit="img") as bar:
        for role, samples in (("train", train), ("test", test)):
            failures[role] = _decode_split(
                listing, role, samples, part_dir / role, size, workers or os.cpu_count() or 1, fresh, bar.update
            )
    bad = failures["train"] + failures["test"]
    if bad and not skip_corrupt:
        lines = "\n".join(f"  {b['path']}: {b['error']}" for b in bad[:20])
        more = f"\n  … and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ConfigError(
            f"{len(bad)} image(s) could not be decoded:\n{lines}{more}\nReplace them, or rerun with --skip-corrupt "
            f"to leave them out (listed in the manifest); the {len(train) + len(test) - len(bad)} decoded images are "
            f"kept in {part_dir} and not decoded again"
        )
    label_of = {n: i for i, n in enumerate(names)}
    manifest = {
        "benchmark": spec.name,
        "cache": cache_name(spec),
        "source": listing.source,
        "layout": listing.layout,
        "split_rule": rule,
        "split_sha256": sha,
        "storage": {"size": size, "rule": "RGB, shorter side → size (PIL bicubic), centre crop size×size"},
        "class_names": names,
        "domains": spec.source.domains,
        "skipped": bad,
    }
    for role, samples in (("train", train), ("test", test)):
        failed = {b["key"] for b in failures[role]}
        keep = np.array([s.key not in failed for s in samples], dtype=bool)
        images = np.load(part_dir / f"{role}.images.npy", mmap_mode="r")
        if not keep.all():  # compact once, only when images were skipped
            kept = np.lib.format.open_memmap(part_dir / f"{role}.kept.npy", mode="w+", dtype=np.uint8,
                                             shape=(int(keep.sum()), 3, size, size))
            for j, i in enumerate(np.flatnonzero(keep)):
                kept[j] = images[i]
            kept.flush()
            del images
            os.replace(part_dir / f"{role}.kept.npy", part_dir / f"{role}.images.npy")
        kept_samples = [s for s, k in zip(samples, keep) if k]
        os.replace(part_dir / f"{role}.images.npy", part_dir / f"{role}_images.npy")
        np.save(part_dir / f"{role}_labels.npy", np.array([label_of[s.class_name] for s in kept_samples], dtype=np.int64))
        (part_dir / f"{role}.done.npy").unlink()
        manifest[role] = {"count": len(kept_samples), "keys": [s.key for s in kept_samples],
                          "domains": [s.domain for s in kept_samples] if spec.source.domains or listing.layout.startswith("domainnet") else None}
    from harness.core.envinfo import environment

    manifest["environment"] = environment("cpu")
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(part_dir / "manifest.json", json.dumps(manifest, indent=1))
    plan_file.unlink()
    if out.exists():  # --force: swap in the new cache, then drop the old one
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(part_dir, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(part_dir, out)
    log(f"prepared {spec.name}: {manifest['train']['count']} train / {manifest['test']['count']} test images, "
        f"{len(names)} classes, split {sha[:12]} ({rule}) → {out}")
    return PrepareResult(out, manifest)
