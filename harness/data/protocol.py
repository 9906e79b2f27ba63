"""Protocol presets: how a paper's code base runs a benchmark — class order, train/test transforms, normalisation
and training settings — as data in `datasets/protocols/<name>.yaml`, validated on load.

A real benchmark (datasets/<name>.yaml with `style:`) is paired with a protocol (its `protocol:` default, or
`--set protocol=NAME`); the run config records the protocol's name, so every result says which was used.
Resolution of training settings (later wins): TrainConfig defaults → the benchmark's `train:` → the protocol's
`train:` → the protocol's `benchmarks: {<benchmark>: {...}}` → grid overrides → `--set`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.config import RunConfig, TrainConfig
from harness.core.errors import ConfigError
from harness.core.paths import datasets_dir
from harness.core.schema import load_named_yaml
from harness.data.augment import TestTransform, TrainTransform, output_size
from harness.data.spec import BenchmarkSpec, ImageSpec, load_spec

ClassOrder = Literal["natural", "permutation", "pcg64-shuffle", "python-shuffle"]


@dataclass
class StyleTransforms:
    """Transforms and normalisation for one image style (`cifar`: 32×32 upsampled; `imagenet`: natural images)."""

    train: TrainTransform
    test: TestTransform
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # 0/1: "no normalisation" ([0,1] pixels)

    def validate(self, where: str) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError(f"{where}: mean and std need 3 values each, std > 0")


@dataclass
class Protocol:
    name: str
    description: str
    source: str  # where the settings come from (paper / code / research note)
    class_order: ClassOrder
    styles: dict[str, StyleTransforms]
    order_seed: int | None = None
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-benchmark TrainConfig overrides
    notes: str = ""
    file: str = ""

    def validate(self, where: str) -> None:
        from harness.core.schema import field_names

        if self.class_order != "natural" and self.order_seed is None:
            raise ConfigError(f"{where}.order_seed: required for class_order {self.class_order!r}")
        valid = field_names(TrainConfig)
        for key_path, d in [("train", self.train)] + [(f"benchmarks.{b}", d) for b, d in self.benchmarks.items()]:
            bad = [k for k in d if k not in valid]
            if bad:
                raise ConfigError(f"{where}.{key_path}: unknown key {bad[0]!r}; valid keys: {', '.join(valid)}")

    def style(self, style: str, benchmark: str) -> StyleTransforms:
        """Transforms for `benchmark`: a `styles` key equal to its name or the longest key it starts with
        (e.g. `imagenet-a` for imagenet-a-10), else its style (`cifar`, `imagenet`)."""
        prefixes = sorted((k for k in self.styles if benchmark.startswith(k)), key=len, reverse=True)
        if prefixes:
            return self.styles[prefixes[0]]
        if style not in self.styles:
            raise ConfigError(
                f"protocol {self.name!r} ({self.file}) has no transforms for style {style!r} of benchmark {benchmark!r}; "
                f"it defines: {', '.join(self.styles)}"
            )
        return self.styles[style]

    def train_settings(self, benchmark: str) -> dict[str, Any]:
        return {**self.train, **self.benchmarks.get(benchmark, {})}


def protocols_dir():
    return datasets_dir() / "protocols"


def available_protocols() -> list[str]:
    return sorted(p.stem for p in protocols_dir().glob("*.yaml"))


def load_protocol(name_or_path: str) -> Protocol:
    """By name (`datasets/protocols/<name>.yaml`) or path to a YAML file."""
    return load_named_yaml(Protocol, name_or_path, protocols_dir(), "protocol")


def apply_protocol(spec, protocol: Protocol):
    """The benchmark spec as the protocol runs it: class order, image size, normalisation and transforms set."""
    st = protocol.style(spec.style, spec.name)
    size = output_size(st.train, st.test, spec.source.storage_size, f"protocol {protocol.name} ({protocol.file}), style {spec.style}")
    image = ImageSpec(size=size, channels=3, mean=list(st.mean), std=list(st.std))
    return dataclasses.replace(
        spec,
        class_order=protocol.class_order,
        order_seed=protocol.order_seed,
        image=image,
        train_transform=st.train,
        test_transform=st.test,
    )


def run_spec(cfg: RunConfig) -> BenchmarkSpec:
    """The benchmark spec a run uses: its YAML with the run's protocol applied (class order, transforms)."""
    spec = load_spec(cfg.benchmark)
    return apply_protocol(spec, load_protocol(cfg.protocol)) if cfg.protocol else spec
