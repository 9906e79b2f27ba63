"""Open a prepared benchmark (harness/data/prepare.py) as `SourceData` backed by memory maps: nothing is decoded or
loaded whole; batches are gathered from the maps by index (harness/data/image_bank.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.core.errors import ConfigError
from harness.core.paths import cache_dir
from harness.data.source_data import SourceData, domain_ids
from harness.data.spec import BenchmarkSpec


def prepared_dir(benchmark: str) -> Path:
    """Where `clmerge prepare` puts a benchmark's cache (complete once its manifest.json exists)."""
    return cache_dir() / "data" / benchmark


def prepare_command(spec: BenchmarkSpec) -> str:
    hub = f" (default: the Hub dataset {spec.source.hub.id})" if spec.source.hub else ""
    return f"clmerge prepare {spec.name} --source PATH_OR_HUB_ID{hub}"


def open_prepared(spec: BenchmarkSpec) -> SourceData:
    """The prepared cache of `spec`; a clear error naming the `prepare` command when it is missing or unfinished."""
    path = prepared_dir(spec.name)
    manifest_file = path / "manifest.json"
    if not manifest_file.exists():
        partial = path.with_name(path.name + ".partial")
        state = f"; an unfinished prepare is in {partial} (rerun the command to resume it)" if partial.exists() else ""
        raise ConfigError(f"benchmark {spec.name} is not prepared ({path} has no manifest.json){state}. "
                          f"Run: {prepare_command(spec)}")
    manifest = json.loads(manifest_file.read_text())
    names = manifest["class_names"]
    if len(names) != spec.num_classes:
        raise ConfigError(f"{path}: prepared with {len(names)} classes, {spec.name} needs {spec.num_classes}; "
                          f"prepare it again with --force")
    arrays = {}
    for role in ("train", "test"):
        arrays[role] = (np.load(path / f"{role}_images.npy", mmap_mode="r"), np.load(path / f"{role}_labels.npy"))
        if len(arrays[role][0]) != manifest[role]["count"] or len(arrays[role][1]) != manifest[role]["count"]:
            raise ConfigError(f"{path}: {role} arrays do not match the manifest; prepare it again with --force")
    data = SourceData(
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        class_names=names,
        split_hash=manifest["split_sha256"],
    )
    if spec.scenario == "domain-il":
        _attach_domains(data, manifest, spec, path)
    return data


def sample_domain(key: str, read: str) -> str | None:
    """The domain of a prepared sample from its key: `file-prefix` — the file name up to its first `_`
    (ImageNet-R: `n01443537/art_0.jpg` → `art`)."""
    if read == "file-prefix":
        base = key.rsplit("/", 1)[-1]
        return base.split("_", 1)[0] if "_" in base else None
    raise ValueError(f"no domain rule {read!r}")


def _attach_domains(data: SourceData, manifest: dict, spec: BenchmarkSpec, path: Path) -> None:
    """Per-sample domains of a domain-il benchmark: the manifest's (`read: source`, e.g. DomainNet) or read from the
    sample keys (`read: file-prefix`, ImageNet-R). Both splits share one list of domain names."""
    read = spec.domains.read
    per_role = {}
    for role in ("train", "test"):
        if read == "source":
            doms = manifest[role].get("domains")
            if doms is None:
                raise ConfigError(f"{path}: the prepared cache records no sample domains, but {spec.name} reads them from "
                                  f"the source; prepare it again with --force from a source that has domains")
        else:
            doms = [sample_domain(k, read) for k in manifest[role]["keys"]]
        per_role[role] = doms
    names, ids = domain_ids(per_role["train"] + per_role["test"], f"{path} ({spec.name} domains)")
    n_train = len(per_role["train"])
    data.domain_names, data.train_domains, data.test_domains = names, ids[:n_train], ids[n_train:]


def is_prepared(benchmark: str) -> bool:
    """Whether a complete cache exists (its manifest is written last); cheap: the manifest is not parsed."""
    return (prepared_dir(benchmark) / "manifest.json").exists()
