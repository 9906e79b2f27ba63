"""The resolved inputs of a run (`Setup`: spec, data, stream, model, method, image banks) built from its config, and
what it has produced so far (`RunState`, saved after every task)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.config import ExecConfig, RunConfig
from harness.core.devices import unusable_gpu_message, visible_nvidia_gpu
from harness.core.errors import ConfigError
from harness.core.schema import from_dict
from harness.data.image_bank import ImageBank
from harness.data.prefetch import use_prefetch
from harness.data.protocol import run_spec
from harness.data.source_data import SourceData
from harness.data.sources import load_source
from harness.data.spec import BenchmarkSpec
from harness.data.stream import TaskStream, stream_of
from harness.data.validation import hold_out
from harness.method.base import Method, MethodContext
from harness.method.registry import get_method
from harness.model.backbone import CLModel
from harness.train import compile as compiling
from harness.train.tracking import NULL_TRACKER, Tracker


def pick_device(name: str) -> torch.device:
    """The run's device. `auto`: CUDA when torch can use it; the CPU only when the machine shows no GPU — a GPU that
    torch cannot use (e.g. a driver older than torch's CUDA build) is a ConfigError naming both, not a silent CPU
    run of days. `cpu` is always the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        gpu = visible_nvidia_gpu()
        if gpu is not None:
            raise ConfigError(f"device auto: {unusable_gpu_message(gpu)}")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        gpu = visible_nvidia_gpu()
        if gpu is not None:
            raise ConfigError(f"device {name!r}: {unusable_gpu_message(gpu)}")
        raise ConfigError(f"device {name!r} requested but CUDA is not available (no GPU is visible); use device=cpu or auto")
    return torch.device(name)


@dataclass
class RunState:
    """Everything a run has produced so far; saved after every task."""

    acc: list[list[float]] = field(default_factory=list)  # R[t][j], class-incremental (no task id)
    task_aware: list[list[float]] = field(default_factory=list)  # R[t][j] scored by task j's own head only
    task_seconds: list[float] = field(default_factory=list)
    method_records: list[dict] = field(default_factory=list)
    grad_norms: list[dict] = field(default_factory=list)  # per task: {"all": [...], "backbone": [...]}, first steps
    val_acc: list[list[float]] = field(default_factory=list)  # R[t][j] on the validation split (tune=true only)

    @property
    def tasks_done(self) -> int:
        return len(self.acc)


@dataclass
class Setup:
    """The resolved inputs of a run: spec, data, stream, model, method."""

    cfg: RunConfig
    spec: BenchmarkSpec
    data: SourceData
    stream: TaskStream
    device: torch.device
    model: CLModel
    method: Method
    train_bank: ImageBank
    test_bank: ImageBank
    val_stream: TaskStream | None = None  # tune=true: tasks whose test_indices are held-out training indices
    val_record: dict | None = None  # fraction, seed, sizes and hash of the validation split
    tracker: Tracker = NULL_TRACKER  # optional experiment logging (harness/train/tracking.py); never changes results
    prefetch: bool = False  # gather/augment the next batch on a background thread (harness/data/prefetch.py)
    head_record: dict | None = None  # the frozen pre-training probe's fit (head: pretraining-probe), else None


def build(cfg: RunConfig, exec_cfg: ExecConfig) -> Setup:
    spec = run_spec(cfg)
    data = load_source(spec)
    stream = stream_of(spec, cfg.order_seed, data)
    val_stream = val_record = None
    if cfg.tune:
        stream, val_stream, val_record = hold_out(stream, data.train_labels, cfg.seed, data.split_hash)
    device = pick_device(exec_cfg.device)
    model = CLModel(cfg.backbone).to(device)
    head_record = arrange_heads(model, spec, cfg)
    method_cls = get_method(cfg.method)
    params = from_dict(method_cls.Params, dict(cfg.method_params), f"method_params of {cfg.method}")
    method = method_cls(params, MethodContext(config=cfg, stream=stream, device=device))
    train_bank = ImageBank(data.train_images, stream.remap(data.train_labels), spec.image, device,
                           spec.test_transform, spec.train_transform, placement=exec_cfg.data_placement)
    test_bank = ImageBank(data.test_images, stream.remap(data.test_labels), spec.image, device, spec.test_transform,
                          cache_eval_view=True)
    method.ctx.train_bank = train_bank  # for hooks that pass over the task's data before training (InfLoRA)
    prefetch = use_prefetch(exec_cfg.prefetch, device)
    # compiled once per run: the same model (and its fixed adapter slots) serves every task
    if compiling.use_compile(exec_cfg.compile, device):
        model.compile_features(compiling.BACKEND)
    return Setup(cfg, spec, data, stream, device, model, method, train_bank, test_bank, val_stream, val_record,
                 prefetch=prefetch, head_record=head_record)


def arrange_heads(model: CLModel, spec: BenchmarkSpec, cfg: RunConfig) -> dict | None:
    """The spec's head arrangement: per-task heads (class-il, the model's default), one shared head trained in every
    task, or the frozen pre-training probe (harness/model/probe_head.py). Returns the probe's record, else None."""
    kind = spec.head_kind()
    if kind == "shared":
        model.heads.make_shared()
    elif kind == "pretraining-probe":
        from harness.core.schema import to_dict
        from harness.model.probe_head import install_probe_head

        if spec.image.channels != 1:
            raise ConfigError(f"{spec.file or spec.name}: head pretraining-probe is fitted on the embedded backbone's "
                              f"pre-training digits (1 channel); this benchmark has {spec.image.channels} channels")
        return install_probe_head(model, repr(to_dict(cfg.backbone)), spec.image.size, spec.num_classes)
    return None
