"""AutoAugment as whole-batch ops: a fixed, small number of kernels per batch whatever the sub-policies drawn.

torchvision's AutoAugment transforms one image with one (op, magnitude) at a time; `harness.data.augment`'s grouped path
batches the samples that share an (op, magnitude bin, sign) — ~38 groups and ~780 small kernels for a batch of 64.
Here each op *slot* (AutoAugment applies slot 0, then slot 1) is done in at most three groups, every group one
gather → one batched kernel sequence with per-sample parameters → one scatter back (groups of a slot are disjoint
sets of samples, so they all read the state left by the previous slot):

- geometric (ShearX/Y, TranslateX/Y, Rotate): torchvision's inverse affine matrix per sample (its own
  ``_get_inverse_affine_matrix``, in float64 on the host, rescaled in float32 exactly as its ``_gen_affine_grid``),
  one ``bmm`` of torchvision's base grid with the ``[n, 3, 2]`` matrices, one ``grid_sample`` (zero fill, nearest or
  bilinear), rounded to uint8 like torchvision's ``_cast_squeeze_out``.
- lookup table: every other op except Color/Sharpness maps each pixel value through a table fixed per (sample,
  channel). Brightness, Posterize, Solarize and Invert depend on their parameters only: their tables are computed
  once per policy on the host by torchvision's own tensor ops on the 256 values, and travel with the parameters.
  The others are built on the device from the images, with the float32 operations torchvision applies per pixel (so
  each entry *is* torchvision's value): Contrast ``trunc(clamp(f·v + (1 − f)·m))`` (m the mean of the sample's
  grayscale), AutoContrast ``trunc(clamp((v − min)·(1/(max − min))·255))`` per channel (torchvision's ``255 / x``
  is ``reciprocal(x)·255``), Equalize per channel from the histogram (torchvision v1's integer rule:
  ``step = (N − count(max value)) // 255``, ``lut[v] = (cumsum[v − 1] + step // 2) // step``, identity when step is
  0; one ``scatter_add_`` for the histograms). The ``[n, C, 256]`` tables are applied with one ``gather``.
- blend (Color, Sharpness): ``trunc(clamp(f·x + (1 − f)·d))`` with d the grayscale (Color) or torchvision's
  3×3 smoothing (Sharpness, centre weight 5/13, borders kept, rounded to uint8), selected per sample.

All randomness is the caller's `AutoAugmentDraw` (drawn on the CPU); what a sample gets is resolved on the host from
the draw with vectorised indexing (no loop over the batch, no reads of device tensors) and travels to the device as
one byte buffer (indices, float32 parameters, tables) in one non-blocking copy (pinned on CUDA). Nothing here waits for the device: group sizes are
host-side facts, and no boolean-mask indexing or scalar read happens on device tensors.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.core.devices import to_device_async
from harness.core.errors import ConfigError

# op kinds (one group per kind and slot) and, within a kind, the op code
_NONE, _GEO, _LUT, _BLEND = 0, 1, 2, 3
# lookup-table ops: codes below _CONTRAST have tables fixed by the parameters (built on the host, shipped with them)
_BRIGHT, _POSTERIZE, _SOLARIZE, _INVERT, _CONTRAST, _AUTOCONTRAST, _EQUALIZE = 1, 2, 3, 4, 5, 6, 7
_COLOR, _SHARP = 1, 2
_LUT_CODES = {
    "Brightness": _BRIGHT, "Contrast": _CONTRAST, "Posterize": _POSTERIZE, "Solarize": _SOLARIZE,
    "Invert": _INVERT, "AutoContrast": _AUTOCONTRAST, "Equalize": _EQUALIZE,
}
_BLEND_CODES = {"Color": _COLOR, "Sharpness": _SHARP}
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# parameter row: kind, code, f, 1 - f, rescaled affine matrix [3, 2] row-major
_K = 10
_COL_KIND, _COL_CODE, _COL_F, _COL_1MF, _COL_THETA = 0, 1, 2, 3, 4


def _affine_matrix(op: str, magnitude: float, height: int, width: int) -> list[float]:
    """torchvision's inverse affine matrix for a geometric AutoAugment op, with the arguments its ``_apply_op`` →
    ``F.affine`` / ``F.rotate`` pass for tensors (shears about the corner, i.e. ``center=[0, 0]``; translations
    truncated to whole pixels; rotation by ``-angle`` about the centre)."""
    from torchvision.transforms.functional import _get_inverse_affine_matrix

    if op in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        centre = [1.0 * (0 - width * 0.5), 1.0 * (0 - height * 0.5)]
        return _get_inverse_affine_matrix(centre, 0.0, [0.0, 0.0], 1.0, [shear, 0.0] if op == "ShearX" else [0.0, shear])
    if op in ("TranslateX", "TranslateY"):
        shift = [1.0 * int(magnitude), 0.0] if op == "TranslateX" else [0.0, 1.0 * int(magnitude)]
        return _get_inverse_affine_matrix([0.0, 0.0], 0.0, shift, 1.0, [0.0, 0.0])
    return _get_inverse_affine_matrix([0.0, 0.0], -magnitude, [0.0, 0.0], 1.0, [0.0, 0.0])  # Rotate


def _static_table(op: str, magnitude: float) -> Tensor:
    """uint8 [256]: the table of a lookup-table op that depends on its parameters only (Brightness, Posterize,
    Solarize, Invert), computed with torchvision's own tensor ops on the 256 values; zeros for the others."""
    from torchvision.transforms import _functional_tensor as FT

    v = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
    if op == "Brightness":
        return FT.adjust_brightness(v, 1.0 + magnitude).view(256)
    if op == "Posterize":
        return FT.posterize(v, int(magnitude)).view(256)
    if op == "Solarize":
        return FT.solarize(v, magnitude).view(256)
    if op == "Invert":
        return FT.invert(v).view(256)
    return torch.zeros(256, dtype=torch.uint8)


def _op_row(op: str, magnitude: float, height: int, width: int, channels: int) -> list[float]:
    """One parameter row (see _K) for op `op` at signed `magnitude`; kind _NONE where torchvision leaves the image as
    it is (Color on one channel, Sharpness on images of side ≤ 2)."""
    row = [0.0] * _K
    if op in _GEOMETRIC:
        theta = torch.tensor(_affine_matrix(op, magnitude, height, width), dtype=torch.float32).reshape(1, 2, 3)
        # exactly torchvision's _gen_affine_grid rescaling, in float32 (IEEE division: the same on any device)
        rescaled = theta.transpose(1, 2) / torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32)
        row[_COL_KIND] = _GEO
        row[_COL_THETA:] = rescaled.reshape(-1).tolist()
    elif op in _LUT_CODES:
        row[_COL_KIND], row[_COL_CODE] = _LUT, _LUT_CODES[op]
        factor = 1.0 + magnitude  # _apply_op's enhance factor; _blend then uses float(ratio) and 1.0 - ratio
        row[_COL_F], row[_COL_1MF] = factor, 1.0 - factor
    elif op in _BLEND_CODES:
        unchanged = (op == "Color" and channels == 1) or (op == "Sharpness" and (height <= 2 or width <= 2))
        if not unchanged:
            factor = 1.0 + magnitude
            row[_COL_KIND], row[_COL_CODE], row[_COL_F], row[_COL_1MF] = _BLEND, _BLEND_CODES[op], factor, 1.0 - factor
    elif op != "Identity":
        raise ValueError(f"AutoAugment op {op!r} has no whole-batch implementation")
    return row


AA_POLICIES = ("imagenet", "cifar10")


def policy_module(policy: str):
    """torchvision's AutoAugment for `policy` (its sub-policies and magnitude bins are the reference here)."""
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    if policy not in AA_POLICIES:
        raise ConfigError(f"unknown AutoAugment policy {policy!r}; valid: {', '.join(AA_POLICIES)}")
    return AutoAugment(AutoAugmentPolicy(policy))


@functools.lru_cache(maxsize=16)
def _policy_table(policy: str, height: int, width: int, channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """(p [25, 2] float64, rows [25, 2, 2 signs, _K] float64, tables [25, 2, 2, 256] uint8): each (sub-policy, slot,
    sign)'s probability, parameter row and parameter-only table, with torchvision's magnitude bins for this image
    size. Built once per (policy, size)."""
    module = policy_module(policy)
    space = module._augmentation_space(10, (height, width))
    p = torch.zeros((len(module.policies), 2), dtype=torch.float64)
    rows = torch.zeros((len(module.policies), 2, 2, _K), dtype=torch.float64)
    tables = torch.zeros((len(module.policies), 2, 2, 256), dtype=torch.uint8)
    for i, sub in enumerate(module.policies):
        for slot, (op, prob, mag_id) in enumerate(sub):
            p[i, slot] = prob
            magnitudes, signed = space[op]
            magnitude = float(magnitudes.tolist()[mag_id]) if mag_id is not None else 0.0
            for sign in (0, 1):  # torchvision negates a signed op's magnitude when its sign draw is 0
                m = -magnitude if signed and sign == 0 else magnitude
                rows[i, slot, sign] = torch.tensor(_op_row(op, m, height, width, channels), dtype=torch.float64)
                tables[i, slot, sign] = _static_table(op, m)
    return p, rows, tables


Run = tuple[int, int, int, int]  # (kind, op code, offset within its slot, count)


def plan(
    policy_id: Tensor, probs: Tensor, signs: Tensor, policy: str, height: int, width: int, channels: int
) -> tuple[Tensor, list[tuple[int, int, list[Run]]]]:
    """Host-side resolution of a batch's draw: (packed, slots).

    ``packed`` (uint8 bytes, host) holds ``[N int64 sample indices | N × _K float32 parameter rows | N × 256 uint8
    parameter-only tables]`` (`unpack` reads it) for the N (sample, slot) pairs whose
    op is applied and changes the image, slot 0's first, each slot's sorted by (kind, op) so that every op's samples
    are one contiguous run; ``slots[s] = (start, count, runs)`` locates slot s's entries and its runs. An op is
    applied when ``probs[b, s] <= p`` (compared in float64, as the grouped path does). Vectorised over the batch."""
    p, rows, tables = _policy_table(policy, height, width, channels)
    picked = rows[policy_id[:, None], torch.arange(2)[None, :], signs]  # [B, 2, _K]
    picked_tables = tables[policy_id[:, None], torch.arange(2)[None, :], signs]  # [B, 2, 256]
    applied = probs.to(torch.float64) <= p[policy_id]  # [B, 2]
    key = torch.where(applied, picked[..., _COL_KIND].long() * 16 + picked[..., _COL_CODE].long(), _NONE)
    counts = (key[:, :, None] == torch.arange(64)[None, None, :]).sum(0).tolist()  # [2, 64] host ints
    idx_parts, row_parts, table_parts, slots, start = [], [], [], [], 0
    for slot in range(2):
        skipped = sum(counts[slot][:16])  # kind _NONE
        order = torch.argsort(key[:, slot], stable=True)[skipped:]  # applied samples, grouped by (kind, op)
        idx_parts.append(order)
        row_parts.append(picked[order, slot])
        table_parts.append(picked_tables[order, slot])
        runs, offset = [], 0
        for k in range(16, 64):
            if counts[slot][k]:
                runs.append((k // 16, k % 16, offset, counts[slot][k]))
                offset += counts[slot][k]
        slots.append((start, offset, runs))
        start += offset
    # float64 → float32 on the host rounds as torchvision's casts of Python floats do (IEEE round to nearest)
    parts = [torch.cat(idx_parts), torch.cat(row_parts).to(torch.float32), torch.cat(table_parts)]
    return torch.cat([t.reshape(-1).view(torch.uint8) for t in parts]), slots


def unpack(packed: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """`plan`'s byte buffer (on any device) as (indices int64 [n], parameters float32 [n, _K], tables uint8
    [n, 256]): views, no copies."""
    a, b = 8 * n, 8 * n + 4 * n * _K
    return packed[:a].view(torch.int64), packed[a:b].view(torch.float32).view(n, _K), packed[b:].view(n, 256)


def apply(
    u8: Tensor,
    policy_id: Tensor,
    probs: Tensor,
    signs: Tensor,
    policy: str,
    interpolation: Literal["nearest", "bilinear"] = "nearest",
) -> Tensor:
    """Each sample's drawn sub-policy applied to uint8 ``[B, C, H, W]`` on any device (draw tensors on the host).

    Per slot: one gather of the slot's applied samples, the geometric, lookup-table and blend kernels each on its
    contiguous run of them, writing into one buffer, and one scatter back."""
    if u8.dtype != torch.uint8 or u8.ndim != 4:
        raise ValueError(f"expected uint8 [B, C, H, W], got {u8.dtype} {tuple(u8.shape)}")
    _, C, H, W = u8.shape
    if C not in (1, 3):
        raise ValueError(f"AutoAugment needs 1 or 3 channels (as torchvision's ops), got {C}")
    packed, slots = plan(policy_id, probs, signs, policy, H, W, C)
    n_total = sum(count for _, count, _ in slots)
    out = u8.clone()
    if n_total == 0:
        return out
    packed = to_device_async(packed, u8.device)  # the batch's only host→device copy
    idx, params, tables = unpack(packed, n_total)
    for start, count, runs in slots:
        if count == 0:
            continue
        i = idx[start : start + count]
        x = out.index_select(0, i)
        prm = params[start : start + count]
        static = tables[start : start + count]
        y = torch.empty_like(x)
        for kind in (_GEO, _LUT, _BLEND):
            mine = [r for r in runs if r[0] == kind]
            if not mine:
                continue
            a, b = mine[0][2], mine[-1][2] + mine[-1][3]
            if kind == _GEO:
                _geometric(x[a:b], prm[a:b, _COL_THETA:].reshape(b - a, 3, 2), interpolation, y[a:b])
            elif kind == _LUT:
                _lookup(x[a:b], prm[a:b], static[a:b], [(code, o - a, n) for _, code, o, n in mine], y[a:b])
            else:
                for _, code, o, n in mine:
                    _blend(x[o : o + n], prm[o : o + n], code, y[o : o + n])
        out.index_put_((i,), y)  # a scatter of whole images (faster than index_copy_ on CPU)
    return out


# ------------------------------------------------------------------------------------------------ geometric


@functools.lru_cache(maxsize=8)
def _base_grid(height: int, width: int, device: torch.device) -> Tensor:
    """torchvision's ``_gen_affine_grid`` base grid ``[1, H·W, 3]`` (pixel centres relative to the image centre, and
    a column of ones), built the same way on `device` (factories only: no host copy)."""
    d = 0.5
    base = torch.empty(1, height, width, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace(-width * 0.5 + d, width * 0.5 + d - 1, steps=width, device=device))
    base[..., 1].copy_(torch.linspace(-height * 0.5 + d, height * 0.5 + d - 1, steps=height, device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    return base.view(1, height * width, 3)


def _geometric(x: Tensor, rescaled_theta: Tensor, interpolation: str, out: Tensor) -> None:
    """uint8 ``[n, C, H, W]`` resampled through per-sample affine maps (rescaled as torchvision does), zero fill,
    rounded into uint8 `out`."""
    n, _, H, W = x.shape
    grid = _base_grid(H, W, x.device).expand(n, H * W, 3).bmm(rescaled_theta).view(n, H, W, 2)
    y = F.grid_sample(x.float(), grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    out.copy_(y.round_())  # float → uint8 as torchvision's .to(torch.uint8)


# ------------------------------------------------------------------------------------------------ lookup tables


def _grayscale(x: Tensor) -> Tensor:
    """torchvision's ``rgb_to_grayscale`` of uint8 ``[n, 3, H, W]`` (float32 weights, truncated): ``[n, 1, H, W]``."""
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(x.dtype).unsqueeze(1)


@functools.lru_cache(maxsize=8)
def _values(device: torch.device) -> tuple[Tensor, Tensor]:
    """The 256 uint8 values as float32 and int64 ``[1, 1, 256]`` on `device` (factories: no host copy)."""
    v = torch.arange(256, dtype=torch.long, device=device).view(1, 1, 256)
    return v.float(), v


def _lookup(x: Tensor, prm: Tensor, static: Tensor, runs: list[tuple[int, int, int]], out: Tensor) -> None:
    """The lookup-table ops (Brightness, Contrast, Posterize, Solarize, Invert, AutoContrast, Equalize) for uint8
    ``[n, C, H, W]`` whose rows come in contiguous runs ``(op code, offset, count)``: one table per (sample,
    channel) — shipped from the host (`static`, parameter-only ops) or built per run — applied to all n samples with
    one gather into uint8 `out`."""
    n, C, H, W = x.shape
    flat = x.reshape(n, C, H * W).long()  # gather's index (and equalize's histogram bins)
    split = sum(k for code, _, k in runs if code < _CONTRAST)  # the parameter-only runs come first
    tables = [static[:split].view(split, 1, 256).expand(split, C, 256)] if split else []
    tables += [_table(code, x[o : o + k], flat[o : o + k], prm[o : o + k]).expand(k, C, 256) for code, o, k in runs if o >= split]
    lut = tables[0] if len(tables) == 1 else torch.cat(tables)
    torch.gather(lut, 2, flat, out=out.view(n, C, H * W))


def _table(code: int, x: Tensor, flat: Tensor, prm: Tensor) -> Tensor:
    """uint8 tables ``[k, 1 or C, 256]`` of image-dependent op `code` (Contrast, AutoContrast, Equalize) for uint8
    images `x` ``[k, C, H, W]`` (`flat`: the same as int64 ``[k, C, H·W]``), each entry computed with torchvision's
    per-pixel float32 operations."""
    k, C = x.shape[:2]
    v = _values(x.device)[0]
    if code == _CONTRAST:
        f, one_minus_f = prm[:, _COL_F].view(k, 1, 1), prm[:, _COL_1MF].view(k, 1, 1)
        grey = _grayscale(x) if C == 3 else x
        mean = grey.float().mean(dim=(1, 2, 3)).view(k, 1, 1)
        # _blend: ratio·img1 + (1 − ratio)·img2 with img2 the grayscale mean
        return (f * v + one_minus_f * mean).clamp_(0, 255).to(torch.uint8)
    if code == _AUTOCONTRAST:
        lo, hi = x.reshape(k, C, -1).aminmax(dim=2)
        lo, hi = lo.float()[..., None], hi.float()[..., None]  # [k, C, 1]
        scale = (hi - lo).reciprocal() * 255  # torchvision's `bound / (max - min)` is Tensor.__rtruediv__
        flat_range = hi == lo  # torchvision: scale not finite (1/0) → min 0, scale 1; max − min ≥ 1 otherwise
        lo = torch.where(flat_range, 0.0, lo)
        scale = torch.where(flat_range, 1.0, scale)
        return ((v - lo) * scale).clamp_(0, 255).to(torch.uint8)
    if code == _EQUALIZE:
        return _equalize_tables(flat, x.reshape(k, C, -1)).to(torch.uint8)
    raise ValueError(f"unknown lookup-table op code {code}")


def _equalize_tables(flat: Tensor, u8: Tensor) -> Tensor:
    """torchvision v1 equalize's table per (sample, channel) of uint8 ``[n, C, N]`` → int64 ``[n, C, 256]``:
    histogram h (`u8`: the same values as uint8); step = (N − h[last non-empty bin]) // 255; table[v] = (Σ_{u<v} h[u] + step // 2) // step clamped to
    0..255, or the identity when step is 0 (torchvision returns such a channel unchanged)."""
    n, C, N = flat.shape
    hist = torch.zeros((n, C, 256), dtype=torch.long, device=flat.device)
    hist.scatter_add_(2, flat, torch.ones((), dtype=torch.long, device=flat.device).expand(n, C, N))
    top = u8.amax(dim=2, keepdim=True).long()  # the last non-empty bin
    step = torch.div(N - hist.gather(2, top), 255, rounding_mode="floor")  # [n, C, 1]
    safe = step.clamp(min=1)
    cum = torch.cumsum(hist, dim=2) + torch.div(step, 2, rounding_mode="floor")
    # torchvision shifts the divided table right by one (table[0] = 0); shifting the sums first is the same
    table = torch.div(F.pad(cum, [1, 0])[..., :-1], safe, rounding_mode="floor").clamp_(0, 255)
    return torch.where(step == 0, _values(flat.device)[1], table)


# ------------------------------------------------------------------------------------------------ blends


@functools.lru_cache(maxsize=8)
def _smoothing_kernel(channels: int, device: torch.device) -> Tensor:
    """torchvision's sharpness kernel (ones, centre 5, divided by its sum 13 in float32), one per channel."""
    kernel = torch.ones((3, 3), dtype=torch.float32, device=device)
    kernel[1, 1] = 5.0
    kernel /= kernel.sum()
    return kernel.expand(channels, 1, 3, 3)


def _blurred(x: Tensor) -> Tensor:
    """torchvision's ``_blurred_degenerate_image`` of uint8 ``[n, C, H, W]``: interior smoothed and rounded."""
    smooth = F.conv2d(x.float(), _smoothing_kernel(x.shape[1], x.device), groups=x.shape[1])
    result = x.clone()
    result[..., 1:-1, 1:-1] = smooth.round_().to(torch.uint8)
    return result


def _blend(x: Tensor, prm: Tensor, code: int, out: Tensor) -> None:
    """Color (blend with the grayscale) or Sharpness (blend with the smoothed image) for uint8 ``[k, C, H, W]``:
    torchvision's ``_blend``, ``trunc(clamp(f·x + (1 − f)·degenerate))``, into uint8 `out`."""
    k = x.shape[0]
    degenerate = _grayscale(x) if code == _COLOR else _blurred(x)
    f = prm[:, _COL_F].view(k, 1, 1, 1)
    one_minus_f = prm[:, _COL_1MF].view(k, 1, 1, 1)
    out.copy_((f * x + one_minus_f * degenerate).clamp_(0, 255))  # float → uint8 as torchvision's .to(torch.uint8)
