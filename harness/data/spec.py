"""Benchmark specifications: `datasets/<name>.yaml`, validated on load.

A spec is data, not code: where the images come from, how many classes, how they are split into tasks, the class
order, the image preprocessing and the protocol defaults (backbone preset, training settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from harness.data.augment import TestTransform, TrainTransform

from harness.core.errors import ConfigError, unknown
from harness.core.paths import datasets_dir
from harness.core.schema import load_named_yaml
from harness.data.image_sources import HubColumns

SOURCE_KINDS = ("sklearn-digits", "images")
STYLES = ("cifar", "imagenet")
SCENARIOS = ("class-il", "domain-il")
# per-task: a new head over each task's classes, concatenated at evaluation (class-il). shared: one head over all
# classes, trained in every task (mammoth's domain-il). pretraining-probe: one head over all classes, a linear probe
# fitted on the backbone's pre-training data and frozen (a stand-in for MagMax's frozen zero-shot head;
# harness/model/probe_head.py), so only the backbone's adapters carry what a task teaches.
HEADS = ("per-task", "shared", "pretraining-probe")


@dataclass
class HubSpec:
    """A Hugging Face Hub dataset holding the benchmark (`datasets.load_dataset(id, config)`)."""

    id: str
    config: str | None = None
    train_split: str = "train"
    test_split: str | None = "test"  # None: no official test split (the seeded stratified split applies)
    columns: HubColumns = field(default_factory=HubColumns)


@dataclass
class SourceSpec:
    """Where the images come from. `sklearn-digits` is bundled with scikit-learn (no download). `images`: a real
    benchmark, read once by `clmerge prepare` from a local folder (`--source PATH`) or a Hub id (`--source ID`,
    default `hub.id`) into a memory-mapped cache (harness/data/prepare.py)."""

    kind: str
    hub: HubSpec | None = None
    domains: list[str] | None = None  # DomainNet: the domains used (all six when None)
    classes_file: str | None = None  # a class subset (one name per line; relative to datasets/); required if set
    class_pattern: str | None = None  # regex every class name must match (e.g. wnids: ^n\d{8}$)
    class_names: list[str] | None = None  # the expected class names, when known (sorted = class ids)
    storage_size: int = 256  # images stored as S×S: shorter side resized to S, centre crop
    # sklearn-digits only: every image under each of these rotations (degrees, counter-clockwise), one domain per
    # angle named rot<angle> (harness/data/sources.py); the domains of a domain-il benchmark
    rotations: list[int] | None = None

    def validate(self, where: str) -> None:
        if self.kind not in SOURCE_KINDS:
            raise unknown("source kind", self.kind, SOURCE_KINDS, where)
        if self.storage_size < 8:
            raise ConfigError(f"{where}.storage_size: must be >= 8, got {self.storage_size}")
        if self.rotations is not None:
            if self.kind != "sklearn-digits":
                raise ConfigError(f"{where}.rotations: only the sklearn-digits source makes rotated domains")
            if not self.rotations or len(set(self.rotations)) != len(self.rotations):
                raise ConfigError(f"{where}.rotations: give distinct angles in degrees, got {self.rotations}")


@dataclass
class DomainsSpec:
    """domain-il: the domains, one task each, in the order they are learnt, and where a sample's domain is read.

    `read`: `source` — the source's own domain of each sample (DomainNet's lists, the digits' rotations);
    `file-prefix` — the part of the file name before the first `_` (ImageNet-R: `art_0.jpg` is in domain `art`).
    """

    order: list[str]
    read: Literal["source", "file-prefix"] = "source"

    def validate(self, where: str) -> None:
        if not self.order or len(set(self.order)) != len(self.order):
            raise ConfigError(f"{where}.order: give the distinct domains in the order learnt, got {self.order}")


@dataclass
class SplitSpec:
    """Task split: either `num_tasks` equal tasks or explicit `increments` (classes per task)."""

    num_tasks: int | None = None
    increments: list[int] | None = None

    def validate(self, where: str) -> None:
        if (self.num_tasks is None) == (self.increments is None):
            raise ConfigError(f"{where}: give exactly one of 'num_tasks' or 'increments'")
        if self.num_tasks is not None and self.num_tasks < 1:
            raise ConfigError(f"{where}.num_tasks: must be >= 1, got {self.num_tasks}")
        if self.increments is not None and any(n < 1 for n in self.increments):
            raise ConfigError(f"{where}.increments: every task needs >= 1 class, got {self.increments}")


@dataclass
class HeldOutSpec:
    """Seeded stratified train/test split for sources without an official one."""

    test_fraction: float = 0.2
    seed: int = 0

    def validate(self, where: str) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"{where}.test_fraction: must be in (0, 1), got {self.test_fraction}")


@dataclass
class ImageSpec:
    """Model input: images are resized to `size`×`size` and normalised with `mean`/`std` per channel."""

    size: int
    channels: int
    mean: list[float]
    std: list[float]

    def validate(self, where: str) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"{where}: mean and std need {self.channels} values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{where}.std: values must be > 0, got {self.std}")


@dataclass
class BenchmarkSpec:
    name: str
    description: str
    source: SourceSpec
    num_classes: int
    backbone: str
    split: SplitSpec | None = None  # class-il: how the classes split into tasks (domain-il: one task per domain)
    scenario: Literal["class-il", "domain-il"] = "class-il"
    domains: DomainsSpec | None = None  # domain-il only
    head: Literal["per-task", "shared", "pretraining-probe"] | None = None  # None: per-task (class-il), shared (domain-il)
    image: ImageSpec | None = None  # model input; for `images` benchmarks it comes from the protocol
    class_order: Literal["natural", "permutation", "pcg64-shuffle", "python-shuffle"] | list[int] = "natural"
    order_seed: int | None = None
    held_out: HeldOutSpec | None = None
    train: dict[str, Any] = field(default_factory=dict)
    style: Literal["cifar", "imagenet"] | None = None  # which transforms of a protocol apply (images benchmarks)
    protocol: str | None = None  # default protocol preset (datasets/protocols/), `--set protocol=...` overrides
    notes: str = ""  # what differs across papers (shown by `clmerge list benchmarks`)
    train_transform: TrainTransform | None = None  # set from the protocol (harness/data/protocol.py)
    test_transform: TestTransform | None = None
    file: str = ""

    def validate(self, where: str) -> None:
        self._validate_scenario(where)
        if self.source.kind == "images" and (self.style is None or self.protocol is None):
            raise ConfigError(f"{where}: an 'images' benchmark needs 'style' ({', '.join(STYLES)}) and a default 'protocol'")
        if self.source.kind != "images" and self.image is None:
            raise ConfigError(f"{where}: missing required key 'image' (size, channels, mean, std)")
        inc = self.increments()
        if self.scenario == "class-il" and sum(inc) != self.num_classes:
            raise ConfigError(f"{where}.split: tasks cover {sum(inc)} classes but num_classes is {self.num_classes}")
        if isinstance(self.class_order, list) and sorted(self.class_order) != list(range(self.num_classes)):
            raise ConfigError(f"{where}.class_order: an explicit order must be a permutation of 0..{self.num_classes - 1}")
        if self.class_order in ("permutation", "pcg64-shuffle", "python-shuffle") and self.order_seed is None:
            raise ConfigError(f"{where}.order_seed: required when class_order is {self.class_order!r} (e.g. 1993, PILOT)")
        from harness.config import TrainConfig  # late: config imports spec users, not the reverse
        from harness.core.schema import field_names

        bad = [k for k in self.train if k not in field_names(TrainConfig)]
        if bad:
            raise ConfigError(f"{where}.train: unknown key {bad[0]!r}; valid keys: {', '.join(field_names(TrainConfig))}")

    def _validate_scenario(self, where: str) -> None:
        if self.scenario == "class-il":
            if self.split is None:
                raise ConfigError(f"{where}: missing required key 'split' (num_tasks or increments) for a class-il benchmark")
            if self.domains is not None:
                raise ConfigError(f"{where}.domains: only a domain-il benchmark has domains (set scenario: domain-il)")
            if self.head_kind() != "per-task":
                raise ConfigError(f"{where}.head: a class-il benchmark has one head per task, got {self.head!r}")
            return
        if self.split is not None:
            raise ConfigError(f"{where}.split: a domain-il benchmark has one task per domain (domains.order); remove 'split'")
        if self.domains is None:
            raise ConfigError(f"{where}: missing required key 'domains' (order, read) for a domain-il benchmark")
        if self.head_kind() == "per-task":
            raise ConfigError(f"{where}.head: a domain-il benchmark has one label space; valid heads: shared, pretraining-probe")
        rot = self.source.rotations
        if rot is not None and sorted(self.domains.order) != sorted(f"rot{a}" for a in rot):
            raise ConfigError(f"{where}.domains.order: the source's domains are {[f'rot{a}' for a in rot]}, got {self.domains.order}")
        if self.domains.read == "file-prefix" and self.source.kind != "images":
            raise ConfigError(f"{where}.domains.read: file-prefix applies to image benchmarks; use 'source'")
        if self.class_order != "natural":
            raise ConfigError(f"{where}.class_order: every domain-il task has all classes; leave class_order natural")

    def head_kind(self) -> str:
        """The head arrangement: the spec's `head`, or its scenario's default."""
        return self.head or ("per-task" if self.scenario == "class-il" else "shared")

    def num_tasks(self) -> int:
        return len(self.domains.order) if self.scenario == "domain-il" else len(self.increments())

    def increments(self) -> list[int]:
        """Classes per task, class-il (domain-il: every task has all classes)."""
        if self.scenario == "domain-il":
            return [self.num_classes] * len(self.domains.order)
        if self.split.increments is not None:
            return list(self.split.increments)
        n, t = self.num_classes, self.split.num_tasks or 1
        if n % t:
            raise ConfigError(
                f"{self.file or self.name}: {n} classes do not split into {t} equal tasks; give split.increments"
            )
        return [n // t] * t


def available_benchmarks() -> list[str]:
    return sorted(p.stem for p in datasets_dir().glob("*.yaml"))


def load_spec(name_or_path: str) -> BenchmarkSpec:
    """Load and validate a benchmark by name (`datasets/<name>.yaml`) or by path to a YAML file."""
    return load_named_yaml(BenchmarkSpec, name_or_path, datasets_dir(), "benchmark")
