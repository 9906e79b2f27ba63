"""Batched, seeded train/test augmentation on uint8 image batches (CPU or GPU), for the cached benchmarks.

Images come from the prepared cache as uint8 ``[B, C, S, S]`` (S=256 for ImageNet-like data: shorter side resized to
256 then centre-cropped; CIFAR stored natively at 32). Nothing here decodes files; the only Python loops over the
batch are the CPU crop kernel and, on CPU only, AutoAugment's op groups (see below). Every random number comes from
an explicit CPU ``torch.Generator`` (never the global RNG), so a run's augmentation stream is fixed by its seed and
is the same on CPU and GPU (draws are made on the CPU and moved to the images' device).

Protocols (research notes: benchmarks.md §1, pm-spec.md §5; see `preset`):

- ``pm`` (P&M / SPLIT ``transform_type='autoaug'``): AutoAugment (CIFAR10 policy for CIFAR, IMAGENET otherwise) →
  RandomResizedCrop(224; bicubic for CIFAR, bilinear otherwise; scale (0.08, 1), ratio (3/4, 4/3)) → normalise
  mean=std=0.5 (the caller's choice: pass mean/std to `train_batch`/`test_batch` to fuse it); test CIFAR Resize(224)
  bicubic, others Resize(256) → CenterCrop(224).
- ``pilot`` (LAMDA-PILOT / APER / dualprompt-pytorch): RandomResizedCrop(224, scale (0.05, 1), bilinear) + flip;
  test Resize(256, bicubic) + CenterCrop(224), CIFAR included (``cifar224``); [0, 1] pixels.
- ``inflora``: CIFAR RRC(224) + flip / Resize(224); ImageNet-R (and DomainNet, CODA-style) RRC(224) + flip /
  Resize(256) + CenterCrop(224); CUB and ImageNet-A PILOT-style. [0, 1] pixels.

How RandomResizedCrop (+ flip) is computed, by device — both sample output pixel k of a box at input coordinate
``left + (k + 0.5)·w/size − 0.5`` (crop-then-resize's half-pixel convention):

- CPU: exactly torchvision's tensor RandomResizedCrop: per sample, ``F.interpolate`` of the uint8 crop with
  ``antialias=True`` (PyTorch's SIMD uint8 kernel, a port of Pillow-SIMD's resampler: PIL's filters, antialiased when
  downscaling, cubic a=-0.5, rounded to uint8 like PIL), then the flip as an index reversal. This is a loop over the
  batch, but each step is one native kernel call on a ~200 KB image; measured on this project's 2-core machine it is
  ~4.5× faster than the batched float kernels below (151 ms vs 690 ms for 256 images at 256² → 224², 1 thread), which
  must convert the whole uint8 batch to float first and are point-sampling scalar loops on CPU.
- CUDA (or any other device): one batched call for the whole batch (`resized_crop_batch`: ``roi_align`` for
  bilinear, ``grid_sample`` for bicubic, flip folded into the sampling map) on float 0..255 values, because a
  per-sample loop would be launch-bound there. Differences from the CPU result: (a) no antialiasing — the kernel is
  point-sampled once per output pixel; it only matters when a crop is *downscaled*, at most 256/224 ≈ 1.14× for S=256,
  size 224 (RRC boxes are at most the image), where it differs from the antialiased result by ~2/255 mean absolute on
  noisy images (less on natural ones, ~0 below 1.05×); CIFAR (32 → 224) is always upscaled. Supersampling (roi_align
  sampling_ratio 2) was measured and rejected: closer only at exactly 1.14×, worse for milder downscales. (b) bicubic
  is PyTorch's Keys kernel with a=-0.75 (PIL: a=-0.5), slightly sharper. (c) at a box edge the kernel reads the true
  neighbouring pixels instead of replicating the box's edge. (d) no rounding to uint8 between resize and ToTensor;
  cubic overshoot is clamped to 0..255.

How AutoAugment is computed, by device (`autoaugment_batch`; ``train_batch(..., autoaugment_path=...)`` overrides):

- CPU (``grouped``): torchvision's own tensor ops, one call per (slot, op, magnitude bin, sign) group of samples —
  ~32–37 groups for a batch of 64 — so CPU results stay exactly what they have always been.
- CUDA (or any other device) (``batched``, harness/data/autoaugment.py): per op slot, one gather of the samples whose op
  applies, the geometric ops as one batched affine grid + ``grid_sample``, all lookup-table ops (Brightness,
  Contrast, Posterize, Solarize, Invert, AutoContrast, Equalize) as per-(sample, channel) tables applied by one
  ``gather``, Color/Sharpness as blends with per-sample factors, and one scatter back; the parameters reach the
  device in one non-blocking copy, and nothing reads a device value on the host (torchvision's ops would: Equalize's
  step test, AutoContrast's masked writes). Tested bit-identical to torchvision's AutoAugment per sample on CPU for
  every op of both policies (and to the grouped path), so the two paths differ only in kernel count and speed.
  Measured with ``python benchmarks/autoaugment_ops.py`` (batch 64, 224 px, CPU, 1 thread, torch 2.14.1; three runs
  on this project's shared 2-core machine at a load average of 5–7, so times are rough): torch ops per batch (views
  excluded, host planning included) 280 → 136 (ImageNet policy, 32 groups) and 455 → 160 (CIFAR10 policy, 37
  groups), and the batched count stays fixed however many groups a batch draws (tests/test_gpu_path.py); time per
  batch grouped 91–118 ms vs batched 90–161 ms (ImageNet policy) and 105–126 vs 110–115 ms (CIFAR10): no gain on
  CPU (the tables' int64 gather indices cost what the saved calls save), hence ``auto`` = grouped there. Not yet
  timed on a GPU (the script takes ``--device cuda``).

Deviations from the per-sample PIL path (``torchvision.transforms`` on PIL images), all deliberate:

1. Geometry is applied to the *stored* square image, not the original file: AutoAugment and RandomResizedCrop see
   the 256×256 centre crop, so crops can never include the borders that the cache's centre crop removed, and
   AutoAugment's translate magnitudes (a fraction of the image side) are relative to 256, not the original size.
2. Resampling: on CPU PyTorch's uint8 kernels instead of PIL's (same filters, rounding may differ by one level); on
   CUDA the batched kernels above.
3. AutoAugment runs on uint8 tensors with torchvision's tensor ops (the same ops ``torchvision.transforms.AutoAugment``
   applies to tensors), or off the CPU their whole-batch equivalents (bit-identical on CPU, see above; on CUDA the
   float reductions — Contrast's mean, the affine grid's matmul — may round differently from torchvision's own CUDA
   run of the same ops); the tensor kernels differ from PIL's by rounding in a few ops (e.g. the enhance family) and
   geometric ops fill with 0 (black), as AutoAugment's default ``fill=None`` does.
4. Random parameters follow torchvision's documented rules but are drawn vectorised from the run's generator, so the
   stream differs from torchvision's (which draws one sample at a time from the global RNG). The same draws are made
   on every device, so CPU and CUDA runs see the same crops, flips and AutoAugment ops.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.core.devices import to_device_async
from harness.core.errors import ConfigError
from harness.data.autoaugment import apply, policy_module

Interp = Literal["bilinear", "bicubic"]
_RRC_ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params: 10 tries, then the central-crop fallback


@dataclass
class TrainTransform:
    """Training augmentation of a stored uint8 image, in this order: AutoAugment → RandomResizedCrop → flip.

    - ``autoaugment``: AutoAugment policy (Cubuk et al., CVPR 2019; tables taken from torchvision at runtime), or none.
    - ``autoaugment_interpolation``: resampling of AutoAugment's geometric ops (torchvision's default is nearest;
      SPLIT/P&M pass bilinear for CIFAR).
    - ``size``: output side (square).
    - ``random_resized_crop``: True: torchvision's RandomResizedCrop(size, scale, ratio) on the stored image. False:
      the whole stored image resized to ``size``×``size`` (``scale``/``ratio`` unused).
    - ``scale``: [min, max] crop area as a fraction of the stored image's area; ``ratio``: [min, max] aspect
      ratio w/h, sampled log-uniformly.
    - ``interpolation``: resampling of the crop resize.
    - ``flip``: horizontal flip with probability 0.5.
    """

    autoaugment: Literal["none", "imagenet", "cifar10"] = "none"
    autoaugment_interpolation: Literal["nearest", "bilinear"] = "nearest"
    size: int = 224
    random_resized_crop: bool = True
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])
    interpolation: Interp = "bilinear"
    flip: bool = False

    def validate(self, where: str) -> None:
        if self.size <= 0:
            raise ConfigError(f"{where}.size: must be a positive number of pixels, got {self.size}")
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(
                f"{where}.scale: expected [min, max] area fractions with 0 < min <= max <= 1 "
                f"(e.g. [0.08, 1.0] or PILOT's [0.05, 1.0]), got {self.scale}"
            )
        if len(self.ratio) != 2 or not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(
                f"{where}.ratio: expected [min, max] aspect ratios (w/h) with 0 < min <= max "
                f"(e.g. [0.75, 1.3333]), got {self.ratio}"
            )


@dataclass
class TestTransform:
    """Deterministic evaluation transform: resize, then centre crop (each optional).

    - ``resize``: the shorter side becomes ``resize`` (torchvision Resize(int) rule; stored images are square, so the
      result is ``resize``×``resize``). None: keep the stored size.
    - ``center_crop``: side of the central square crop (torchvision CenterCrop; offset ``round((H - c) / 2)``). None:
      no crop.
    - ``interpolation``: resize kernel; antialiased (as PIL and torchvision's ``antialias=True``).
    """

    __test__ = False  # not a pytest test class despite the name

    resize: int | None = None
    center_crop: int | None = None
    interpolation: Interp = "bicubic"

    def validate(self, where: str) -> None:
        for name in ("resize", "center_crop"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{where}.{name}: must be a positive number of pixels or null, got {value}")
        if self.resize is not None and self.center_crop is not None and self.center_crop > self.resize:
            raise ConfigError(
                f"{where}: center_crop ({self.center_crop}) is larger than resize ({self.resize}); "
                "crop at most the resized side (e.g. resize 256, center_crop 224)"
            )


def output_size(train: TrainTransform, test: TestTransform, stored: int, where: str = "transforms") -> int:
    """The model's input side; raises ConfigError when train and test would feed the model different sizes."""
    test_side = test.center_crop or test.resize or stored
    if train.size != test_side:
        raise ConfigError(
            f"{where}: train images are {train.size}×{train.size} but test images are {test_side}×{test_side} "
            f"(stored side {stored}); set train.size or test.resize/center_crop so that they agree"
        )
    if test.center_crop is not None and test.resize is None and test.center_crop > stored:
        raise ConfigError(f"{where}: center_crop {test.center_crop} exceeds the stored image side {stored}; set resize")
    return train.size


# ------------------------------------------------------------------------------------------------ AutoAugment


@dataclass(frozen=True)
class AutoAugmentDraw:
    """Per-sample AutoAugment randomness, exactly what ``torchvision.transforms.AutoAugment.get_params`` draws for one
    image: the sub-policy index, two uniforms (op k is applied when ``probs[k] <= p_k``) and two signs (a signed op's
    magnitude is negated when ``signs[k] == 0``)."""

    policy_id: Tensor  # [B] int64
    probs: Tensor  # [B, 2] float32
    signs: Tensor  # [B, 2] int64


def autoaugment_policies(policy: str) -> list:
    """The 25 sub-policies ``((op, p, magnitude_bin), (op, p, magnitude_bin))`` of `policy`, from torchvision."""
    return list(policy_module(policy).policies)


def draw_autoaugment(batch: int, policy: str, generator: torch.Generator) -> AutoAugmentDraw:
    """One independent AutoAugment draw per sample (sub-policy uniform over the policy's 25), from `generator`."""
    n = len(autoaugment_policies(policy))
    return AutoAugmentDraw(
        policy_id=torch.randint(n, (batch,), generator=generator),
        probs=torch.rand((batch, 2), generator=generator),
        signs=torch.randint(2, (batch, 2), generator=generator),
    )


AAPath = Literal["auto", "grouped", "batched"]
_AA_PATHS = ("auto", "grouped", "batched")


def _check_aa_path(path: str) -> None:
    if path not in _AA_PATHS:
        raise ValueError(f"AutoAugment path: expected one of {', '.join(_AA_PATHS)}, got {path!r}")


def autoaugment_batch(
    u8: Tensor,
    draw: AutoAugmentDraw,
    policy: str,
    interpolation: Literal["nearest", "bilinear"] = "nearest",
    path: AAPath = "auto",
) -> Tensor:
    """Apply each sample's drawn sub-policy to uint8 ``[B, C, H, W]``; same result as running torchvision's
    AutoAugment forward on each image with its draw (bit-identical on CPU for both paths, tests/test_augment.py).

    `path`: ``grouped`` (`autoaugment_grouped`: one torchvision call per (op, magnitude, sign) group), ``batched``
    (`harness.data.autoaugment.apply`: a fixed few kernels per op slot, no host synchronisation), or ``auto``: grouped on
    CPU, where it measured faster (module docstring), batched on any other device.
    """
    _check_aa_path(path)
    if path == "batched" or (path == "auto" and u8.device.type != "cpu"):
        return apply(u8, draw.policy_id, draw.probs, draw.signs, policy, interpolation)
    return autoaugment_grouped(u8, draw, policy, interpolation)


def autoaugment_grouped(
    u8: Tensor,
    draw: AutoAugmentDraw,
    policy: str,
    interpolation: Literal["nearest", "bilinear"] = "nearest",
) -> Tensor:
    """`autoaugment_batch`'s CPU path, batched by grouping: for op slot 0 then slot 1, samples whose slot resolves to
    the same (op, magnitude bin, sign) are transformed together by one call of torchvision's tensor op (which works
    on batches); samples whose op is not applied are left as they are. The slots are sequential, so grouping per
    slot is exact. There are at most ~50 groups per slot whatever the batch size (~38 for a batch of 64), each a
    few torchvision kernels, some of which read device scalars (equalize, autocontrast's masked writes).
    """
    import torchvision.transforms.v2.functional as F2
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.autoaugment import _apply_op  # torchvision's own op dispatch: no retyped semantics

    if u8.dtype != torch.uint8 or u8.ndim != 4:
        raise ValueError(f"expected uint8 [B, C, H, W], got {u8.dtype} {tuple(u8.shape)}")
    module = policy_module(policy)
    policies = module.policies
    space = module._augmentation_space(10, (u8.shape[-2], u8.shape[-1]))  # torchvision's magnitude bins
    mode = InterpolationMode(interpolation)
    out = u8.clone()
    pid = draw.policy_id.tolist()
    probs = draw.probs.tolist()
    signs = draw.signs.tolist()
    for slot in range(2):
        groups: dict[tuple[str, int | None, bool], list[int]] = {}
        for b in range(len(pid)):
            op_name, p, mag_id = policies[pid[b]][slot]
            if probs[b][slot] <= p:
                negative = bool(space[op_name][1]) and signs[b][slot] == 0
                groups.setdefault((op_name, mag_id, negative), []).append(b)
        # all groups' members in one host tensor, copied to the images' device once (not one blocking copy per group)
        members = to_device_async(torch.tensor([b for m in groups.values() for b in m], dtype=torch.long), u8.device)
        start = 0
        for (op_name, mag_id, negative), group in groups.items():
            magnitudes, _ = space[op_name]
            magnitude = magnitudes.tolist()[mag_id] if mag_id is not None else 0.0  # host values: no scalar read
            idx, start = members[start : start + len(group)], start + len(group)
            if op_name == "Equalize":
                # v1's tensor equalize loops over images in Python; v2's is batched and gives identical results
                # (tests compare against v1 AutoAugment per sample)
                out[idx] = F2.equalize(out[idx])
            else:
                out[idx] = _apply_op(out[idx], op_name, -magnitude if negative else magnitude, interpolation=mode, fill=None)
    return out


# ------------------------------------------------------------------------------------------------ RandomResizedCrop


def draw_crop_boxes(
    batch: int, height: int, width: int, scale: list[float], ratio: list[float], generator: torch.Generator
) -> Tensor:
    """RandomResizedCrop boxes ``[B, 4]`` int64 as (top, left, h, w), by torchvision's documented rule, vectorised.

    Per sample: up to 10 attempts of (area = U(scale) × H·W, aspect = exp(U(log ratio))); w = round(sqrt(area·aspect)),
    h = round(sqrt(area/aspect)); the first attempt that fits is kept, its position uniform over all integer offsets;
    if none fits, the central crop clamped to the ratio range (the whole image for square images). All 10 attempts
    are always drawn so the generator advances by a fixed amount per batch.
    """
    area = float(height * width)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    u = torch.rand((batch, _RRC_ATTEMPTS, 2), generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(lo + (hi - lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximal index
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    pos = torch.rand((batch, 2), generator=generator, dtype=torch.float64)
    top = torch.minimum((pos[:, 0] * (height - h + 1)).floor().long(), height - h)
    left = torch.minimum((pos[:, 1] * (width - w + 1)).floor().long(), width - w)
    # torchvision's fallback: central crop, clamped to the ratio range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    none = ~ok.any(dim=1)
    h = torch.where(none, fh, h)
    w = torch.where(none, fw, w)
    top = torch.where(none, (height - fh) // 2, top)
    left = torch.where(none, (width - fw) // 2, left)
    return torch.stack([top, left, h, w], dim=1)


def resized_crop_batch(
    x: Tensor, boxes: Tensor, size: int, interpolation: Interp, flip: Tensor | None = None
) -> Tensor:
    """Crop ``boxes`` (top, left, h, w) from float ``[B, C, H, W]``, resize each to size×size and mirror the samples
    where ``flip`` is True, for the whole batch at once (the CUDA path of `train_batch`; works on any device).

    Output pixel centre k samples the input at ``left + (k + 0.5)·w/size − 0.5`` (the half-pixel convention of
    crop-then-resize), one kernel evaluation per output pixel (no antialiasing, see the module docstring):

    - bilinear: ``torchvision.ops.roi_align(aligned=True, sampling_ratio=1)`` — exactly one bilinear sample at each
      output bin's centre; it precomputes the taps once per box for all channels and needs no sampling-grid tensor
      (on CPU it is ~1.5× faster than ``affine_grid`` + ``grid_sample``). Samples stay within half a pixel of the
      image, where roi_align clamps to the edge pixel (= border replication).
    - bicubic: ``grid_sample(mode="bicubic", padding_mode="border")`` on a separable grid built directly (the
      same map as ``affine_grid``, without its batched matmul). Cubic overshoot is left for the caller to clamp.

    The flip mirrors the sampling positions (no extra pass over the output): exact for bicubic; for bilinear equal
    to reversing the unflipped output up to float32 rounding of the sample positions (≤ 1e-4 of the range).
    """
    B, _, H, W = x.shape
    b = boxes.to(dtype=torch.float64) if boxes.device == x.device else boxes.to(device=x.device, dtype=torch.float64)
    top, left, h, w = b.unbind(1)
    if flip is None:
        mirror = torch.zeros_like(w, dtype=torch.bool)
    else:
        mirror = flip.to(dtype=torch.bool) if flip.device == x.device else flip.to(device=x.device, dtype=torch.bool)
    if interpolation == "bilinear":
        from torchvision.ops import roi_align

        # a mirrored sample is the box traversed right to left: x1 = right edge, x2 = left edge (aligned=True keeps
        # the negative width as is, so the samples run from the right edge leftwards)
        x1 = torch.where(mirror, left + w, left)
        x2 = torch.where(mirror, left, left + w)
        batch_idx = torch.arange(B, dtype=torch.float64, device=x.device)
        rois = torch.stack([batch_idx, x1, top, x2, top + h], dim=1).to(x.dtype)
        return roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    # grid_sample's normalised coordinates (align_corners=False): pixel centre p ↔ (2p + 1)/W − 1; the output
    # centres k are symmetric about 0, so negating the x scale mirrors exactly
    k = (torch.arange(size, dtype=torch.float64, device=x.device) * 2 + 1) / size - 1
    sx = torch.where(mirror, -w / W, w / W)
    gx = sx[:, None] * k + ((2 * left + w) / W - 1)[:, None]
    gy = (h / H)[:, None] * k + ((2 * top + h) / H - 1)[:, None]
    grid = torch.empty((B, size, size, 2), dtype=x.dtype, device=x.device)
    grid[..., 0] = gx[:, None, :]
    grid[..., 1] = gy[:, :, None]
    return F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)


def resized_crop_per_sample(
    u8: Tensor,
    boxes: Tensor,
    size: int,
    interpolation: Interp,
    flip: Tensor | None = None,
    affine: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """torchvision's tensor RandomResizedCrop (+ flip) for uint8 ``[B, C, H, W]``: per sample, crop ``boxes[b]`` (top,
    left, h, w) and resize to size×size with ``antialias=True`` (the CPU path of `train_batch`).

    Returns uint8, or with ``affine=(scale, shift)`` (per-channel ``[C, 1, 1]``) float32 ``resized·scale + shift``,
    converted per sample while it is in cache (one pass over the batch fewer than converting afterwards)."""
    B, C = u8.shape[:2]
    out = torch.empty((B, C, size, size), dtype=torch.uint8 if affine is None else torch.float32, device=u8.device)
    mirror = [False] * B if flip is None else flip.tolist()
    for b, (top, left, h, w) in enumerate(boxes.tolist()):
        crop = u8[b : b + 1, :, top : top + h, left : left + w]
        r = F.interpolate(crop, size=(size, size), mode=interpolation, antialias=True, align_corners=False)[0]
        r = r.flip(-1) if mirror[b] else r
        if affine is None:
            out[b] = r
        else:
            torch.addcmul(affine[1], out[b].copy_(r), affine[0], out=out[b])
    return out


# ------------------------------------------------------------------------------------------------ entry points


def train_batch(
    u8: Tensor,
    t: TrainTransform,
    generator: torch.Generator,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    autoaugment_path: AAPath = "auto",
) -> Tensor:
    """Augment uint8 ``[B, C, H, W]`` (any device) into float32 ``[B, C, t.size, t.size]`` in [0, 1], or normalised
    ``(x - mean) / std`` when `mean`/`std` are given (fused into the final scaling: one pass fewer than doing it after).
    `autoaugment_path` picks AutoAugment's implementation (`autoaugment_batch`; ``auto``: grouped on CPU, batched
    elsewhere) — the same pixels either way on CPU.

    Draw order from `generator` (CPU): AutoAugment (if any), crop boxes (if random_resized_crop), flips (if flip).
    Same generator state → bit-identical output on the same device. The global RNG is never used.
    """
    if u8.dtype != torch.uint8 or u8.ndim != 4:
        raise ValueError(f"expected uint8 [B, C, H, W], got {u8.dtype} {tuple(u8.shape)}")
    if generator.device.type != "cpu":
        raise ValueError("train_batch draws from a CPU torch.Generator (the stream must not depend on the device)")
    _check_aa_path(autoaugment_path)  # before any draw, also when the transform has no AutoAugment
    B, _, H, W = u8.shape
    draw = draw_autoaugment(B, t.autoaugment, generator) if t.autoaugment != "none" else None
    if t.random_resized_crop:
        boxes = draw_crop_boxes(B, H, W, t.scale, t.ratio, generator)
    else:
        boxes = torch.tensor([[0, 0, H, W]], dtype=torch.long).expand(B, 4)
    flip = torch.rand(B, generator=generator) < 0.5 if t.flip else None
    if u8.device.type == "cpu":
        # Every random choice is drawn above, so chunks of samples can run on threads (torch ops release the GIL):
        # the result per sample does not depend on the chunking (AutoAugment groups and crops are per sample).
        affine = _unit_affine(u8.shape[1], mean, std)

        def chunk(sl: slice) -> Tensor:
            x = u8[sl]
            if draw is not None:
                part = AutoAugmentDraw(draw.policy_id[sl], draw.probs[sl], draw.signs[sl])
                x = autoaugment_batch(x, part, t.autoaugment, t.autoaugment_interpolation, autoaugment_path)
            return resized_crop_per_sample(x, boxes[sl], t.size, t.interpolation, None if flip is None else flip[sl], affine)

        # Threads pay off for AutoAugment's grouped ops (1.5× on 2 cores); the crop-only loop is bound by Python
        # and runs slower on threads (benchmarks/data_throughput.py), so it stays on the calling thread.
        n = max(1, min(os.cpu_count() or 1, B // 16)) if draw is not None else 1
        if n == 1:
            return chunk(slice(0, B))
        bounds = [B * i // n for i in range(n + 1)]
        return torch.cat(list(_cpu_pool().map(chunk, [slice(a, b) for a, b in zip(bounds, bounds[1:])])))
    if draw is not None:
        u8 = autoaugment_batch(u8, draw, t.autoaugment, t.autoaugment_interpolation, autoaugment_path)
    # boxes and flips travel together: one host tensor, one asynchronous copy per batch
    packed = torch.cat([boxes.double(), (flip if flip is not None else torch.zeros(B, dtype=torch.bool)).double()[:, None]], 1)
    packed = to_device_async(packed, u8.device)
    boxes, flip = packed[:, :4], packed[:, 4] > 0.5
    # resampling is linear, so it runs on 0..255 values and the /255 (and normalisation) is applied to the smaller
    # output: one full-size pass fewer
    out = resized_crop_batch(u8.float(), boxes, t.size, t.interpolation, flip)
    return _to_unit(out, clamp=t.interpolation == "bicubic", mean=mean, std=std)


_POOL: list = []


def _cpu_pool():
    """Threads for CPU augmentation, created on first use (no import-time side effects)."""
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="augment"))
    return _POOL[0]


def _unit_affine(channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[Tensor, Tensor]:
    """(scale, shift), each [C, 1, 1], mapping 0..255 to (x/255 - mean)/std (mean 0, std 1 when not given)."""
    m = torch.as_tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32).expand(channels)
    sd = torch.as_tensor(std if std is not None else [1.0] * channels, dtype=torch.float32).expand(channels)
    return (1.0 / (255.0 * sd)).view(-1, 1, 1), (-m / sd).view(-1, 1, 1)


def _to_unit(x: Tensor, clamp: bool, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """0..255 floats → [0, 1] (ToTensor's x/255), or (x/255 - mean)/std in one fused pass; in place."""
    if clamp:
        x.clamp_(0.0, 255.0)  # cubic overshoot; PIL clamps to 0..255 too
    if mean is None and std is None:
        return x.div_(255.0)
    scale, shift = _device_affine(x.shape[1], tuple(mean or ()), tuple(std or ()), x.device)
    return torch.addcmul(shift, x, scale, out=x)


_AFFINE: dict = {}


def _device_affine(channels: int, mean: tuple, std: tuple, device: torch.device) -> tuple[Tensor, Tensor]:
    """`_unit_affine` on `device`, built once per (constants, device): no host→device copy per batch."""
    key = (channels, mean, std, str(device))
    if key not in _AFFINE:
        scale, shift = _unit_affine(channels, mean or None, std or None)
        _AFFINE[key] = (scale.to(device), shift.to(device))
    return _AFFINE[key]


def test_batch(
    u8: Tensor, t: TestTransform, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Tensor:
    """Deterministic evaluation transform of uint8 ``[B, C, H, W]`` into float32 in [0, 1] (or normalised, as in
    `train_batch`): antialiased resize of the shorter side to ``t.resize`` (torchvision Resize(int) rule) then
    CenterCrop(``t.center_crop``)."""
    if u8.dtype != torch.uint8 or u8.ndim != 4:
        raise ValueError(f"expected uint8 [B, C, H, W], got {u8.dtype} {tuple(u8.shape)}")
    x = u8.float()
    H, W = x.shape[-2:]
    resized = False
    if t.resize is not None:
        short, long = (H, W) if H <= W else (W, H)
        new_long = int(t.resize * long / short)  # torchvision's rule for Resize(int)
        size = (t.resize, new_long) if H <= W else (new_long, t.resize)
        if size != (H, W):
            # antialias=True is what PIL and torchvision's Resize do; for upscaling it also selects PIL's a=-0.5 cubic
            x = F.interpolate(x, size=size, mode=t.interpolation, antialias=True, align_corners=False)
            resized = True
    if t.center_crop is not None:
        c = t.center_crop
        H, W = x.shape[-2:]
        if c > H or c > W:
            raise ValueError(f"center_crop {c} is larger than the (resized) image {H}×{W}")
        top, left = int(round((H - c) / 2.0)), int(round((W - c) / 2.0))
        x = x[..., top : top + c, left : left + c]
    return _to_unit(x.contiguous(), clamp=resized and t.interpolation == "bicubic", mean=mean, std=std)
