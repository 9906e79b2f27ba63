"""A non-CPU device on a CPU-only machine, for the device-placement contract test (tests/test_device_placement.py).

`StandInTensor` reports the device `STANDIN` — torch's `lazy` device type, which `.to()` accepts on any build and no
code path of clmerge or peft special-cases (unlike `cuda`, `cpu` and `meta`: peft skips moving new adapters when a
layer holds meta tensors) — and holds its real values in a CPU tensor, so a whole run computes real numbers. Every op
that mixes a stand-in tensor with a CPU tensor of one or more dimensions raises `DeviceMismatch`, as CUDA raises
"Expected all tensors to be on the same device" — 0-dim CPU tensors are allowed, as CUDA allows them (host scalars,
e.g. AdamW's step counters). So does drawing with a CPU `torch.Generator` into a stand-in tensor (CUDA rejects a CPU
generator for a CUDA tensor); `torch.Generator(device=<stand-in>)` gives a `StandInGenerator`, which may. While
`StandInDevice` is active, factories and copies that name the stand-in device (`torch.zeros(..., device=d)`,
`t.to(d)`, `module.to(d)`) produce stand-in tensors, and `.to("cpu")` plain ones.

What it cannot see: how values are read (`.item()` and `.tolist()` return real numbers here; the sync test,
tests/test_gpu_path.py, covers host reads), anything compiled (torch.compile is not traced through the subclass),
CUDA streams and events, bf16 autocast (CUDA only), and slowness: a tensor left on the CPU that CUDA accepts too (a
0-dim tensor, an operand of a cross-device `copy_`) is not an error here either. Pinned host memory is emulated (a
flag on the tensor). `torch.load(map_location=<stand-in>)` is not supported (checkpoints load on the CPU). The
dispatch modes are per thread: a thread that touches device tensors (the prefetch thread) enters `StandInDevice`
itself (`patch_generator=False`: `torch.Generator` is process-wide and patched once).
Checkpoints pickle the CPU values: a checkpoint written by a stand-in run loads as CPU tensors, as a CUDA one loaded
with map_location="cpu" does.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

STANDIN = torch.device("lazy", 0)


class DeviceMismatch(RuntimeError):
    """A stand-in (device) tensor met a CPU tensor in one op: on CUDA this op would fail."""


class StandInTensor(torch.Tensor):
    """A tensor on the stand-in device whose values live in the CPU tensor `elem`."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, requires_grad: bool = False):
        assert type(elem) is torch.Tensor and elem.device.type == "cpu", (type(elem), elem.device)
        t = torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=STANDIN, requires_grad=requires_grad,
        )
        t.elem = elem
        return t

    def __repr__(self) -> str:
        return f"StandInTensor({self.elem!r})"

    def __reduce_ex__(self, protocol):  # torch.save: the values, as a CUDA tensor is saved with its values
        return self.elem.detach().__reduce_ex__(protocol)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _is_standin_device(d) -> bool:
    return d is not None and torch.device(d).type == STANDIN.type


def _run(func, args, kwargs):
    """Run `func` on the CPU values; check devices first; wrap the outputs that live on the stand-in device."""
    name = func.__name__ if hasattr(func, "__name__") else str(func)
    flat = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
    on_device = any(isinstance(a, StandInTensor) for a in flat)
    copy = func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default, torch.ops.aten.copy.default,
                    torch.ops.aten._copy_from.default, torch.ops.aten._copy_from_and_resize.default)
    if on_device and not copy:
        host = [a for a in flat if not isinstance(a, StandInTensor) and a.dim() > 0]
        if host:
            raise DeviceMismatch(
                f"{func}: a device tensor met a CPU tensor of shape {tuple(host[0].shape)} (on CUDA: Expected all "
                "tensors to be on the same device)"
            )
    target = kwargs.get("device")
    out_on_device = on_device
    if "device" in kwargs:
        out_on_device = _is_standin_device(target) if target is not None else on_device
        kwargs = dict(kwargs, device=torch.device("cpu") if target is not None else None)
        if kwargs["device"] is None:
            del kwargs["device"]
    if func is torch.ops.aten.copy_.default:  # the destination decides where the result lives
        out_on_device = isinstance(args[0], StandInTensor)
    kwargs.pop("pin_memory", None)
    unwrapped = tree_map(lambda a: a.elem if isinstance(a, StandInTensor) else a, (args, kwargs))
    out = func(*unwrapped[0], **unwrapped[1])
    if func is torch.ops.aten.copy_.default:
        return args[0]
    if not out_on_device:
        return out
    # an op that returns one of its inputs (in place, `out=`) returns that input's wrapper
    wrappers = {id(a.elem): a for a in flat if isinstance(a, StandInTensor)}

    def wrap(o):
        if type(o) is not torch.Tensor:
            return o
        return wrappers[id(o)] if id(o) in wrappers else StandInTensor(o)

    return tree_map(wrap, out)


class _Dispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if any(isinstance(a, StandInTensor) for a in flat) or _is_standin_device(kwargs.get("device")):
            return _run(func, args, kwargs)
        return func(*args, **kwargs)


class _FromData(TorchFunctionMode):
    """Checks draws with a CPU generator into device tensors. Builds `torch.tensor(data, device=d)` on the CPU, then
    moves it through the dispatcher (torch copies it below the dispatcher's Python layer). Reads device tensors with
    `.tolist()`, refuses `.numpy()` on them as CUDA does, and emulates pinned host memory (`pin_memory`/`is_pinned`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # checked here, on the caller's objects: below, the dispatcher hands over a new Python generator object
        gen = kwargs.get("generator")
        if gen is not None and type(gen) is not StandInGenerator and (
            _is_standin_device(kwargs.get("device"))
            or any(isinstance(a, StandInTensor) for a in torch.utils._pytree.tree_leaves(args))
        ):
            raise DeviceMismatch(f"{func.__name__}: a CPU generator draws into a device tensor (on CUDA: Expected a "
                                 "'cuda' device type for generator)")
        if func in (torch.tensor, torch.as_tensor, torch.Tensor.new_tensor) and _is_standin_device(kwargs.get("device")):
            return func(*args, **dict(kwargs, device="cpu")).to(STANDIN)
        if func is torch.Tensor.tolist and isinstance(args[0], StandInTensor):  # CUDA: a copy to the host, then read
            return args[0].elem.tolist()
        if func is torch.Tensor.numpy and isinstance(args[0], StandInTensor):
            raise TypeError("can't convert a device tensor to numpy: use Tensor.cpu() to copy it to host memory first")
        if func is torch.Tensor.pin_memory:  # page-locked host memory, emulated: a copy that says it is pinned
            pinned = args[0].clone()
            pinned._standin_pinned = True
            return pinned
        if func is torch.Tensor.is_pinned:
            return getattr(args[0], "_standin_pinned", False)
        return func(*args, **kwargs)


class _GeneratorType(type(torch._C.Generator)):
    def __instancecheck__(cls, obj) -> bool:  # while patched in, `isinstance(g, torch.Generator)` still holds for all
        return isinstance(obj, torch._C.Generator)


class StandInGenerator(torch._C.Generator, metaclass=_GeneratorType):
    """`torch.Generator(device=<stand-in>)`: a CPU generator (its state is a CPU byte tensor, as a CUDA generator's
    is) that reports the stand-in device and may draw into stand-in tensors. Any other device: a plain generator."""

    def __new__(cls, device="cpu"):
        if _is_standin_device(device):
            return super().__new__(cls, "cpu")
        return torch._C.Generator(device)

    @property
    def device(self) -> torch.device:
        return STANDIN


class StandInDevice:
    """While active: factories and copies that name the stand-in device make stand-in tensors, and
    `torch.Generator(device=<stand-in>)` a StandInGenerator."""

    def __init__(self, patch_generator: bool = True):
        self.patch_generator = patch_generator

    def __enter__(self):
        self._modes = (_FromData(), _Dispatch())
        self._generator = torch.Generator
        if self.patch_generator:
            torch.Generator = StandInGenerator
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)
        if self.patch_generator:
            torch.Generator = self._generator
