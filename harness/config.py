"""Run configuration: one dataclass fully describing a cell, resolved from defaults, spec, grid and --set overrides.

Resolution order (later wins): TrainConfig defaults → the benchmark spec's protocol (`train:`, `backbone:`) →
grid overrides → command-line `--set key=value`. The resolved config is hashed into the run's directory name.
Execution settings that do not change results (device, threads, progress bars) live in `ExecConfig`, outside the hash.
"""

from __future__ import annotations

import os

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from harness.backbone import BackboneConfig
from harness.errors import ConfigError
from harness.schema import field_names, from_dict, to_dict


@dataclass
class TrainConfig:
    """The shared loop's settings (per task)."""

    epochs: int = 10
    epoch_repeats: int = 1  # passes over the task's data per epoch (SPLIT/VPT-NSP `expand_times`, pm-spec.md §6.1)
    batch_size: int = 32
    eval_batch_size: int = 256
    lr_lora: float = 1e-3
    lr_head: float = 1e-2
    weight_decay: float = 5e-5
    schedule: Literal["constant", "cosine", "multistep"] = "cosine"  # stepped per epoch, restarted each task
    milestones: list[int] = field(default_factory=list)  # epochs, for schedule=multistep (×gamma at each)
    gamma: float = 0.1
    temperature: float = 1.0  # training CE uses logits / temperature (P&M/SplitLoRA: 30)

    def validate(self, where: str) -> None:
        for key in ("epochs", "epoch_repeats", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature: must be > 0, got {self.temperature}")


@dataclass
class ExecConfig:
    """How to execute a run; not part of its identity."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads (None: torch default)
    progress: bool = True  # tqdm bars, shown only on a TTY
    log: str | None = None  # experiment tracking backend: tensorboard | wandb (harness/tracking.py)
    # data prefetching (harness/prefetch.py): auto (on for CUDA) | on | off; CLMERGE_PREFETCH sets the default
    prefetch: str = field(default_factory=lambda: os.environ.get("CLMERGE_PREFETCH", "auto"))
    # training images on the device (harness/data.py resident_on_device): auto | device | host; CLMERGE_DATA_PLACEMENT
    data_placement: str = field(default_factory=lambda: os.environ.get("CLMERGE_DATA_PLACEMENT", "auto"))


def config_hash(config: dict) -> str:
    """The run id of a config as `RunConfig.to_dict` (or result.json's `config`) holds it: SHA-256 of canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass
class RunConfig:
    benchmark: str
    method: str
    backbone: BackboneConfig
    train: TrainConfig
    method_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # training seed: LoRA/head init, batch order, augmentation, method randomness
    order_seed: int | None = None  # class-order seed (None: the spec's own; ignored for natural order)
    protocol: str | None = None  # protocol preset of an image benchmark (datasets/protocols/), None for embedded ones
    tune: bool = False  # hold out a validation split of each task's training data (harness/validation.py)

    def to_dict(self) -> dict:
        d = to_dict(self)
        if not d["tune"]:  # absent when off, so the hash (and result.json) of every untuned run is unchanged
            del d["tune"]
        return d

    def run_id(self) -> str:
        """Hash of the fully resolved config: the run's identity and directory name."""
        return config_hash(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "RunConfig":
        return from_dict(cls, data, where)


OVERRIDE_PREFIXES = ("train.", "backbone.", "method.")
TOP_LEVEL_KEYS = ("seed", "order_seed", "protocol", "tune")


def valid_override_keys(method_params_cls: type) -> list[str]:
    keys = list(TOP_LEVEL_KEYS)
    keys += [f"train.{k}" for k in field_names(TrainConfig)]
    keys += [f"backbone.{k}" for k in field_names(BackboneConfig)]
    keys += [f"method.{k}" for k in field_names(method_params_cls)]
    return keys


def parse_set(items: list[str]) -> dict[str, Any]:
    """`['train.epochs=3', 'method.epsilon=0.2']` → {'train.epochs': 3, 'method.epsilon': 0.2} (values as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
        out[key.strip()] = _number(value)
    return out


def _number(value: Any) -> Any:
    """YAML 1.1 reads '1e-3' as a string; users mean a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


SEED_LIMIT = 2**32  # NumPy's legacy RandomState (class orders, splits) takes seeds in [0, 2**32)


def check_seed(value: Any, where: str, optional: bool = False) -> None:
    """A training or class-order seed: an integer in [0, 2**32) (None allowed for an optional one), else ConfigError."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        valid = "an integer in [0, 2**32)" + (" or null (the benchmark's own)" if optional else "")
        raise ConfigError(f"{where}: must be {valid}, got {value!r}")


def resolve(
    benchmark: str,
    method: str,
    seed: int = 0,
    order_seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    where: str = "overrides",
) -> RunConfig:
    """The fully resolved RunConfig of one cell. Unknown benchmark/method/key → ConfigError naming the valid ones."""
    from harness.protocol import apply_protocol, load_protocol
    from harness.registry import get_method
    from harness.spec import load_spec

    spec = load_spec(benchmark)
    method_cls = get_method(method)
    protocol_name = (overrides or {}).get("protocol", spec.protocol)
    if protocol_name is not None and spec.source.kind != "images":
        raise ConfigError(f"{where}: protocol presets apply to image benchmarks; {spec.name!r} is {spec.source.kind}")
    train_dict = dict(spec.train)
    if protocol_name is not None:
        protocol = load_protocol(str(protocol_name))
        spec = apply_protocol(spec, protocol)
        train_dict.update(protocol.train_settings(spec.name))
    train = to_dict(from_dict(TrainConfig, train_dict, f"{spec.file}.train (+ protocol {protocol_name})"))
    backbone: dict[str, Any] = {"preset": spec.backbone}
    params = to_dict(method_cls.Params())
    top: dict[str, Any] = {"seed": seed, "order_seed": order_seed, "protocol": protocol_name, "tune": False}
    valid = valid_override_keys(method_cls.Params)
    for key, value in (overrides or {}).items():
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        if key in TOP_LEVEL_KEYS:
            top[key] = value
            continue
        section, name = key.split(".", 1)
        {"train": train, "backbone": backbone, "method": params}[section][name] = value
    for key in ("seed", "order_seed"):
        check_seed(top[key], f"{where}: {key}", optional=key == "order_seed")
    params_obj = from_dict(method_cls.Params, params, f"{where} (method {method!r})")
    if spec.class_order == "natural" or isinstance(spec.class_order, list):
        top["order_seed"] = None  # the seed has no effect: do not let it split identical runs
    elif top["order_seed"] is None:
        top["order_seed"] = spec.order_seed
    data = {
        "benchmark": spec.name,
        "method": method_cls.name,
        "backbone": to_dict(from_dict(BackboneConfig, backbone, f"{where} (backbone)").resolved()),
        "train": train,
        "method_params": to_dict(params_obj),
        **top,
    }
    return RunConfig.from_dict(data, where)


def run_spec(cfg: RunConfig):
    """The benchmark spec a run uses: its YAML with the run's protocol applied (class order, transforms)."""
    from harness.protocol import apply_protocol, load_protocol
    from harness.spec import load_spec

    spec = load_spec(cfg.benchmark)
    return apply_protocol(spec, load_protocol(cfg.protocol)) if cfg.protocol else spec
