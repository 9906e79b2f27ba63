"""Run configuration types: one dataclass fully describing a cell (`RunConfig`), its training settings and the
execution settings. A cell's config is resolved from defaults, spec, protocol, grid and --set overrides by
harness/resolve.py; the resolved config is hashed into the run's directory name.
Execution settings that do not change results (device, threads, progress bars) live in `ExecConfig`, outside the hash.
"""

from __future__ import annotations

import hashlib
import math
import os

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from harness.core.errors import ConfigError
from harness.core.schema import field_names, from_dict, to_dict
from harness.model.backbone import BackboneConfig


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
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"{where}.temperature: must be a finite number > 0, got {self.temperature}")
        for key in ("lr_lora", "lr_head", "weight_decay"):  # 0 is valid (frozen / no decay); NaN or < 0 never is
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{where}.{key}: must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ConfigError(f"{where}.gamma: must be a finite number > 0, got {self.gamma}")


@dataclass
class ExecConfig:
    """How to execute a run; not part of its identity."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads (None: torch default)
    progress: bool = True  # tqdm bars, shown only on a TTY
    log: str | None = None  # experiment tracking backend: tensorboard | wandb (harness/train/tracking.py)
    # data prefetching (harness/data/prefetch.py): auto (on for CUDA) | on | off; CLMERGE_PREFETCH sets the default
    prefetch: str = field(default_factory=lambda: os.environ.get("CLMERGE_PREFETCH", "auto"))
    # training images on the device (harness/data/image_bank.py resident_on_device): auto | device | host; CLMERGE_DATA_PLACEMENT
    data_placement: str = field(default_factory=lambda: os.environ.get("CLMERGE_DATA_PLACEMENT", "auto"))
    # epoch checkpoints serialised and written on a background thread while the next epoch trains (harness/core/io.py
    # BackgroundWriter); off: written inline, as before. Same files and results either way.
    background_checkpoints: bool = True
    # torch.compile of the training forward (harness/train/compile.py): auto (on for CUDA) | on | off; CLMERGE_COMPILE
    compile: str = field(default_factory=lambda: os.environ.get("CLMERGE_COMPILE", "auto"))
    # deterministic CUDA kernels (harness/core/determinism.py): off | on; CLMERGE_DETERMINISTIC sets the default. On
    # CUDA a resumed run equals an uninterrupted one bit for bit only with `on` (slower); CPU runs are deterministic
    deterministic: str = field(default_factory=lambda: os.environ.get("CLMERGE_DETERMINISTIC", "off"))
    # rerun a finished cell whose recorded code differs from the current code (harness/method/code_identity.py);
    # off: such a cell is kept and reported stale
    rerun_stale: bool = False


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
    tune: bool = False  # hold out a validation split of each task's training data (harness/data/validation.py)
    scenario: str = "class-il"  # the benchmark's (class-il | domain-il), set by resolve from the spec; not a --set key

    def to_dict(self) -> dict:
        d = to_dict(self)
        if not d["tune"]:  # absent when off, so the hash (and result.json) of every untuned run is unchanged
            del d["tune"]
        if d["scenario"] == "class-il":  # absent at its default: every class-il run keeps its run id
            del d["scenario"]
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
