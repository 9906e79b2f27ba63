"""The GPU path, proven on CPU: RNG states survive any `map_location`, the step loop never synchronises with the
device, and the data/compile options give the same numbers as the plain loop."""

from __future__ import annotations

import contextlib
import os
import traceback

import pytest
import torch

from harness.config import ExecConfig
from harness.core.seeding import rng_from_host
from harness.method.registry import get_method, method_names
from harness.resolve import resolve
from harness.store import run_dir
from harness.train.checkpoints import restore_rngs
from harness.train.run import execute
from harness.train.setup import build
from tests.conftest import FAST
from tests.fakes import crash_in_task_1

QUIET = ExecConfig(progress=False)


def test_epoch_checkpoint_rng_states_restore_from_any_map_location(results, monkeypatch):
    """A CUDA resume loads the epoch checkpoint with map_location=cuda, and Generator.set_state accepts only CPU byte
    tensors. Here the checkpoint is loaded onto the meta device (tensors moved off the host, as a GPU load does):
    every generator state must still restore, bit-equal to a CPU load."""
    cfg = resolve("split-digits-2x5", "pm", seed=4, overrides={**FAST, "train.epochs": 3})
    crash_in_task_1(monkeypatch, get_method("pm"), cfg, epochs_done=1)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, QUIET)
    path = run_dir(cfg) / "checkpoint.epoch.pt"
    on_cpu = torch.load(path, map_location="cpu", weights_only=False)
    on_meta = torch.load(path, map_location="meta", weights_only=False)
    assert on_cpu["method"] is None  # P&M's sums live in checkpoint.pt only (written once per task)
    assert on_meta["model"]["merged"] and all(t.is_meta for t in on_meta["model"]["merged"].values())  # it did move

    s = build(cfg, QUIET)
    s.method.begin_task(s.model, s.stream.tasks[1])
    g = torch.Generator()
    with torch.random.fork_rng(devices=[]):
        restore_rngs(on_meta, s.method, g)
        assert torch.equal(torch.get_rng_state(), rng_from_host(on_cpu["torch_rng"]))
    assert torch.equal(g.get_state(), rng_from_host(on_cpu["batches"]))
    restored = s.method.rng_state()
    expected = rng_from_host(on_cpu["method_rng"])
    assert set(restored) == set(expected) and "_rng" in restored  # P&M's perturbation sampler and its counts
    for k, v in expected.items():
        assert torch.equal(restored[k], v) if isinstance(v, torch.Tensor) else restored[k] == v


class SyncCounter:
    """Counts, while active, what would make the host wait for a GPU: scalar reads of tensors (`.item()`, `float()`,
    `int()`, `bool()` → aten._local_scalar_dense, which fires on CPU too), `.tolist()` and `.numpy()`, ops whose output
    size depends on the data (nonzero, boolean-mask indexing, masked_select, unique, repeat_interleave without
    output_size, bincount), copies that change device (`.cpu()`), `.to(device)`/`.cuda()`/`.copy_` that name a device
    without non_blocking=True, non_blocking copies from pageable (unpinned) host memory to a device (synchronous on
    CUDA), and tensors built from Python data with a device (`torch.tensor(..., device=...)`).

    `device_only=False` (plain CPU tensors): every such read counts, except inside torch/optim (AdamW's step counters
    are host tensors by design). `device_only=True` (with the stand-in device, tests/standin.py): reads count when the
    tensor is on the device; the same reads of host tensors (a CPU generator's draws, AdamW's host step counters) are
    free on CUDA too, so they do not count, and nothing is exempt by where it is called from."""

    SCALAR_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item", "aten._unique",
                  "aten.unique", "aten.bincount")

    def __init__(self, device_only: bool = False):
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        self.events: list[str] = []
        counter = self

        def on_device(*ts) -> bool:
            return any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in ts)

        def event(what: str, *tensors, device: bool | None = None, strict: bool = True) -> None:
            """Record `what`: with device_only, when it touches the device (`device`, else any of `tensors` on it);
            otherwise when `strict` and not called from torch/optim."""
            if device_only:
                if device if device is not None else on_device(*tensors):
                    counter.events.append(what)
            elif strict and not any("/torch/optim/" in f.filename for f in traceback.extract_stack()):
                counter.events.append(what)

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = str(func)
                inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
                if name.startswith(SyncCounter.SCALAR_OPS):
                    event(name, *inputs)
                if name.startswith("aten.repeat_interleave.Tensor") and kwargs.get("output_size") is None:
                    event(f"{name} without output_size", *inputs)
                if name.startswith(("aten.index.Tensor", "aten.index_put")) and any(  # boolean mask: nonzero inside
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())
                ):
                    event(f"{name} with a boolean mask", *inputs)
                out = func(*args, **kwargs)
                if name.startswith(("aten._to_copy", "aten.copy_")) and isinstance(out, torch.Tensor):
                    copy_ = name.startswith("aten.copy_")
                    src = args[1] if copy_ else args[0]
                    non_blocking = (args[2] if len(args) > 2 else kwargs.get("non_blocking")) if copy_ else kwargs.get("non_blocking")
                    if isinstance(src, torch.Tensor) and src.device != out.device:
                        # to the host: the host reads; to the device: blocking unless non_blocking (from pinned
                        # memory: the Function mode checks the source)
                        event(f"{name} {src.device}->{out.device}", device=on_device(src) or not non_blocking)
                return out

        class Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", str(func))
                if name in ("to", "cuda", "copy_"):
                    named = [torch.device(a) for a in args[1:] if isinstance(a, (torch.device, str))] + (
                        [torch.device(kwargs["device"])] if kwargs.get("device") is not None else []
                    )
                    src, dst = (args[1], args[0]) if name == "copy_" else (args[0], None)
                    targets = named + ([dst.device] if dst is not None else [])
                    to_device = name == "cuda" or any(d.type != "cpu" for d in targets)
                    if not kwargs.get("non_blocking", False):
                        if name == "cuda" or (name == "copy_" and dst.device != src.device) or named:
                            event(f"blocking .{name}({named})", device=to_device or on_device(src))
                    elif to_device and src.device.type == "cpu" and not src.is_pinned():
                        event(f"non_blocking .{name} from pageable host memory to {targets}", device=True)
                if name in ("tolist", "numpy") and args and isinstance(args[0], torch.Tensor):
                    event(f".{name}()", args[0], strict=False)  # strict mode: host draws are read as lists
                if name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
                    event(f"torch.{name}(..., device={kwargs['device']})", device=torch.device(kwargs["device"]).type != "cpu")
                return func(*args, **kwargs)

        self._modes = (Function(), Dispatch())

    def __enter__(self):
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)


@pytest.mark.parametrize("method", method_names())
def test_step_loop_never_synchronises(results, monkeypatch, method, one_thread):
    """A few training steps of every registered method, over two tasks (so that the task-≥1 paths — penalties,
    gradient projection, perturbation — run), with the model and data on the stand-in device (tests/standin.py) and
    every epoch's step loop under the counter — the data prefetched on its thread, which is watched too. On a
    machine with CUDA the same loop also runs on the GPU under torch.cuda.set_sync_debug_mode("error")."""
    import dataclasses

    import harness.train.trainer as trainer
    from harness.data.prefetch import Prefetcher
    from tests.standin import STANDIN, StandInDevice

    cfg = resolve("split-digits-2x5", method, seed=0, overrides={**FAST, "train.batch_size": 12})
    events: list[str] = []
    steps = [0]
    original = trainer.run_epoch

    def counted(s, task, opt, batches, watch, heads):
        with SyncCounter(device_only=True) as c:
            if s.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("error")
            try:
                original(s, task, opt, batches, watch, heads)
            finally:
                if s.device.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
        events.extend(c.events)
        steps[0] += len(watch.losses)

    class WatchedPrefetcher(Prefetcher):
        """The prefetch thread's work (the wrapped iterator: gather, copy, augment) under its own counter."""

        def __init__(self, batches, device, depth=2):
            def watched():
                it = iter(batches)
                while True:
                    with StandInDevice(patch_generator=False), SyncCounter(device_only=True) as c:
                        item = next(it, None)
                    events.extend(f"prefetch thread: {e}" for e in c.events)
                    if item is None:
                        return
                    yield item

            super().__init__(watched(), device, depth)

    monkeypatch.setattr(trainer, "run_epoch", counted)
    monkeypatch.setattr(trainer, "Prefetcher", WatchedPrefetcher)
    devices = [STANDIN] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        run_on = ExecConfig(progress=False, device=str(device), prefetch="on", compile="off")
        with StandInDevice() if device == STANDIN else contextlib.nullcontext():
            s = build(cfg, run_on)
            small = tuple(  # 24 training images a task (2 steps), 8 test images: every hook runs, on less data
                dataclasses.replace(t, train_indices=t.train_indices[:24], test_indices=t.test_indices[:8])
                for t in s.stream.tasks
            )
            s.stream = s.method.ctx.stream = dataclasses.replace(s.stream, tasks=small)
            state = trainer.run_tasks(s, run_on, stop_after=2)
        assert state.tasks_done == 2 and steps[0] >= 4
        assert events == [], f"{method} on {device}: the step loop synchronises: {sorted(set(events))}"


def _gpu_throughput():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_throughput.py"
    spec = importlib.util.spec_from_file_location("gpu_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_gpu_throughput_benchmark_runs_tiny_on_cpu():
    """benchmarks/gpu_throughput.py --device cpu --tiny: the script cannot rot (its GPU run is the same code). Task 0
    holds 20 images (200 images over 200 classes, 20 classes a task) in batches of 16: after the one warm-up step
    (16 images) the 2 timed steps take a batch of 4 and one of 16 — img/s counts those 20, not 2 × 16."""
    import math

    out = _gpu_throughput().main(["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "0", "--images", "200",
                                  "--repeats", "2"])
    for method in ("seq-lora", "pm"):
        r = out[method]
        assert r["images"] == 20 and r["steps"] == 2
        assert r["img_s"] == pytest.approx(r["images"] / (r["step_s"] * r["steps"]))
        assert r["flops_per_image"] > 0 and r["flops"] == pytest.approx(16 * r["flops_per_image"])
        assert math.isnan(r["mfu"])  # no CPU peak: MFU is n/a, not invented
        assert r["compile_s"] >= 0 and r["host_syncs"] == 0 and len(r["repeats"]) == 2
        assert r["end_task_s"] > 0 and r["ckpt_s"] > 0 and math.isfinite(r["full_s"]) and r["full_s"] > 0
    ratios = [p["full_s"] / q["full_s"] for p, q in zip(out["pm"]["repeats"], out["seq-lora"]["repeats"])]
    assert out["pm_over_seq_lora_runs"] == pytest.approx(ratios)
    assert min(ratios) <= out["pm_over_seq_lora"] <= max(ratios)


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None),
])
def test_gpu_peak_is_read_from_the_device_name(name, tflops):
    assert _gpu_throughput().peak_for_name(name) == tflops


def test_prefetcher_yields_the_same_batches_and_stops_cleanly():
    import threading

    from harness.data.prefetch import Prefetcher

    items = [(torch.full((2,), float(i)), torch.tensor([i])) for i in range(7)]
    got = list(Prefetcher(iter(items), torch.device("cpu"), depth=2))
    assert len(got) == 7 and all(a is x and b is y for (a, b), (x, y) in zip(got, items))

    def failing():
        yield items[0]
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(Prefetcher(failing(), torch.device("cpu")))
    before = threading.active_count()
    for _ in Prefetcher(iter(items), torch.device("cpu"), depth=1):
        break  # the consumer stops early (e.g. a kill): the thread must end, not block on a full queue
    assert threading.active_count() == before


def test_prefetching_changes_no_result_and_resumes_exactly(results, monkeypatch):
    """A P&M run with the data prefetched on a thread, killed mid-epoch and resumed, ends exactly like the plain loop."""
    cfg = resolve("split-digits-2x5", "pm", seed=4, overrides={**FAST, "train.epochs": 2})
    reference = run_tasks_plain(cfg)
    on = ExecConfig(progress=False, prefetch="on")
    crash_in_task_1(monkeypatch, get_method("pm"), cfg, epochs_done=1)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, on)
    monkeypatch.setattr(get_method("pm"), "training_loss", crash_training_loss_original)
    execute(cfg, on)
    import json

    result = json.loads((run_dir(cfg) / "result.json").read_text())
    assert result["acc_matrix"] == reference.acc and result["method_records"] == reference.method_records
    assert result["grad_norms"] == reference.grad_norms


crash_training_loss_original = get_method("pm").training_loss


def run_tasks_plain(cfg):
    from harness.train.trainer import run_tasks

    plain = ExecConfig(progress=False, prefetch="off")
    return run_tasks(build(cfg, plain), plain)


def test_device_resident_images_give_the_same_batches():
    """data_placement=device (the whole uint8 set on the device, gathered there) draws exactly the batches of the
    host/memory-map path, augmentation included; a bad setting is a clear error."""
    import numpy as np

    from harness.core.errors import ConfigError
    from harness.data.augment import TestTransform, TrainTransform
    from harness.data.image_bank import ImageBank, resident_on_device
    from harness.data.spec import ImageSpec

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 20, 20), dtype=np.uint8)
    labels = rng.integers(0, 4, 40)
    spec = ImageSpec(size=16, channels=3, mean=[0.5] * 3, std=[0.5] * 3)
    train = TrainTransform(autoaugment="imagenet", size=16, flip=True)
    test = TestTransform(resize=18, center_crop=16)
    cpu = torch.device("cpu")
    banks = [ImageBank(images, labels, spec, cpu, test, train, placement=p) for p in ("host", "device")]
    assert banks[0]._resident is None and banks[1]._resident is not None
    runs = [list(b.iterate(np.arange(40), 16, torch.Generator().manual_seed(3), augment=(0, "aug"))) for b in banks]
    for (xa, ya), (xb, yb) in zip(*runs, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not resident_on_device("auto", images, cpu)
    with pytest.raises(ConfigError, match="auto, host or device"):
        resident_on_device("gpu", images, cpu)


def test_device_sync_counter_catches_the_former_blind_spots():
    """On the stand-in device the counter sees what the CPU-only counter missed: multi-element `.tolist()`, `.cpu()`,
    `.numpy()`, `torch.unique`, `repeat_interleave` with tensor repeats, a non_blocking copy from pageable memory,
    and host reads inside torch/optim (AdamW's step counters moved to the device) — while host draws read as lists,
    pinned non_blocking copies, device factories and AdamW with host step counters stay free."""
    from tests.standin import STANDIN, StandInDevice

    with StandInDevice():
        x = torch.arange(6.0).to(STANDIN)
        host = torch.ones(4)
        cases = {
            "tolist": lambda: x.tolist(), "cpu": lambda: x.cpu(), "numpy": lambda: x.numpy(), "item": lambda: x[0].item(),
            "unique": lambda: torch.unique(x), "repeat_interleave": lambda: torch.repeat_interleave(x, x.long()),
            "pageable non_blocking": lambda: host.to(STANDIN, non_blocking=True),
            "pageable non_blocking copy_": lambda: torch.empty(4, device=STANDIN).copy_(host, non_blocking=True),
            "blocking to": lambda: host.to(STANDIN), "from data": lambda: torch.tensor([1.0], device=STANDIN),
            "mask": lambda: x[x > 2],
        }
        for what, case in cases.items():
            with SyncCounter(device_only=True) as c:
                with contextlib.suppress(TypeError):  # .numpy() of a device tensor raises, after being counted
                    case()
            assert len(c.events) >= 1, what

        p = torch.nn.Parameter(torch.ones(3).to(STANDIN))
        opt = torch.optim.AdamW([p], foreach=True)
        p.grad = torch.ones(3, device=STANDIN)
        opt.step()
        with SyncCounter(device_only=True) as c:  # allowed: host work, pinned async copies, device work
            torch.randint(3, (4,), generator=torch.Generator().manual_seed(0)).tolist()
            host.pin_memory().to(STANDIN, non_blocking=True)
            torch.zeros((), device=STANDIN)
            torch.repeat_interleave(x, x.long(), output_size=15)
            (x * 2).sum()
            opt.step()  # step counters on the host
        assert c.events == []
        opt.state[p]["step"] = opt.state[p]["step"].to(STANDIN)  # as a map_location=device resume left them
        with SyncCounter(device_only=True) as c:
            opt.step()
        assert any("_local_scalar_dense" in e for e in c.events), c.events


def test_batched_crop_path_is_sync_free_after_its_first_batch():
    """The CUDA crop path (boxes and flips copied once per batch, cached normalisation constants), run on CPU."""
    from harness.data import augment
    from harness.core.devices import to_device_async
    from harness.data.augment import _to_unit, draw_crop_boxes, resized_crop_batch

    augment._AFFINE.clear()  # as in a fresh process
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8, generator=g)
    for first in (True, False):
        boxes = draw_crop_boxes(8, 20, 20, [0.08, 1.0], [0.75, 4 / 3], g)
        flip = torch.rand(8, generator=g) < 0.5
        packed = to_device_async(torch.cat([boxes.double(), flip.double()[:, None]], 1), u8.device)
        with SyncCounter() as c:
            x = resized_crop_batch(u8.float(), packed[:, :4], 16, "bilinear", packed[:, 4] > 0.5)
            _to_unit(x, clamp=False, mean=[0.5] * 3, std=[0.5] * 3)
        assert (c.events != []) == first  # the first batch puts the normalisation constants on the device, once


def test_whole_batch_autoaugment_is_sync_free_with_a_fixed_op_count(monkeypatch):
    """AutoAugment's whole-batch path (the path off the CPU), run on CPU: no scalar reads, masks or blocking copies;
    one host→device copy per batch; and a number of torch ops that does not grow with the number of distinct
    (op, magnitude, sign) groups drawn — unlike the grouped path, which runs torchvision once per group."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from harness.data import autoaugment
    from harness.data.augment import autoaugment_batch, draw_autoaugment

    class OpCount(TorchDispatchMode):
        """Torch ops that compute (views excluded), host planning included."""

        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 0 if func.is_view else 1
            return func(*args, **(kwargs or {}))

    copies = []
    to_device = autoaugment.to_device_async
    monkeypatch.setattr(autoaugment, "to_device_async", lambda t, d: copies.append(t.shape) or to_device(t, d))
    counts: dict = {}
    for policy in ("imagenet", "cifar10"):
        for batch in (64, 1024, 4096):
            g = torch.Generator().manual_seed(batch)
            u8 = torch.randint(0, 256, (batch, 3, 12, 12), dtype=torch.uint8, generator=g)
            draw = draw_autoaugment(batch, policy, g)
            autoaugment_batch(u8, draw, policy, path="batched")  # first call: per-policy tables, cached constants
            copies.clear()
            with SyncCounter() as sync, OpCount() as ops:
                autoaugment_batch(u8, draw, policy, path="batched")
            assert sync.events == [] and len(copies) == 1, (policy, batch, sync.events, copies)
            with OpCount() as grouped:
                autoaugment_batch(u8, draw, policy, path="grouped")
            counts[policy, batch] = (ops.n, grouped.n)
    for policy in ("imagenet", "cifar10"):
        # a batch of 4096 draws every (op, magnitude, sign) of both slots, 64 only some: the batched count is the
        # same once every op occurs (1024 vs 4096) and at most 200, the grouped count is not
        assert counts[policy, 1024][0] == counts[policy, 4096][0] <= 200, counts
        assert counts[policy, 64][0] <= counts[policy, 1024][0] < counts[policy, 1024][1] / 2.2, counts


def test_cached_eval_view_gives_bit_identical_batches_and_accuracies(results, monkeypatch):
    """A test bank that caches its evaluation view (harness/data/image_bank.py) yields exactly the batches of the uncached
    memory-map path — for batches that are fresh, cached, or partly both — and evaluation gives the same accuracies,
    while the test transform runs once per image; the evaluation reads its counts with a single sync."""
    import numpy as np

    from harness.data.augment import TestTransform
    from harness.data.image_bank import ImageBank
    from harness.data.spec import ImageSpec
    from harness.train.trainer import evaluate, run_tasks

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, 4, 40)
    spec = ImageSpec(size=16, channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    test = TestTransform(resize=18, center_crop=16)  # bicubic upscaling: a transform worth caching
    cpu = torch.device("cpu")
    plain, cached = (ImageBank(images, labels, spec, cpu, test, cache_eval_view=c) for c in (False, True))
    assert plain._viewed is None and cached._viewed is not None
    transformed = [0]
    real = ImageBank.preprocess

    def counting(self, u8):
        if self is cached:
            transformed[0] += len(u8)
        return real(self, u8)

    monkeypatch.setattr(ImageBank, "preprocess", counting)
    for indices, bs in [(np.arange(0, 20), 8), (np.arange(10, 40), 7), (np.arange(40)[::-1].copy(), 16), (np.arange(40), 40)]:
        for (xa, ya), (xb, yb) in zip(plain.iterate(indices, bs), cached.iterate(indices, bs), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert transformed[0] == 40  # each image once
    monkeypatch.undo()

    # a whole run's evaluation: the digits' test images as a memory-map-like array, cached or not
    cfg = resolve("split-digits-2x5", "seq-lora", seed=0, overrides=FAST)
    s = build(cfg, QUIET)
    run_tasks(s, QUIET)
    u8 = (s.data.test_images.numpy() if isinstance(s.data.test_images, torch.Tensor) else np.asarray(s.data.test_images))
    host_labels = s.test_bank._labels_host.numpy()
    banks = [ImageBank(u8, host_labels, s.spec.image, s.device, s.spec.test_transform, cache_eval_view=c)
             for c in (False, True)]  # on the model's device (CUDA where the GPU check runs this)
    assert banks[0]._pre is None and banks[1]._viewed is not None
    last = len(s.stream.tasks) - 1
    reference = evaluate(s.model, s.test_bank, s.stream, last, 64)
    for bank in banks + [banks[1]]:  # the cached bank twice: filled, then read from the cache
        assert evaluate(s.model, bank, s.stream, last, 64) == reference
    assert banks[1]._viewed.all()
    on_device = s.device.type != "cpu"  # CUDA (the GPU check): count only what makes the host wait for the GPU
    with SyncCounter(device_only=on_device) as c:
        evaluate(s.model, banks[1], s.stream, last, 64)
    # the counts are read by one .tolist() (a sync on CUDA), not an int() per batch; the host→device copies of the
    # indices and labels are pinned and asynchronous
    assert c.events == ([".tolist()"] if on_device else []), c.events


def test_eval_cache_budget():
    from harness.data.image_bank import EVAL_CACHE_CPU_BYTES, eval_cache_fits

    cpu = torch.device("cpu")
    assert eval_cache_fits(EVAL_CACHE_CPU_BYTES, cpu) and not eval_cache_fits(EVAL_CACHE_CPU_BYTES + 1, cpu)


def test_a_gpu_torch_cannot_use_stops_the_run_instead_of_training_on_the_cpu(monkeypatch, tmp_path):
    """`device: auto` on a node whose GPU torch cannot use (driver older than torch's CUDA build) is a ConfigError
    naming the GPU, its driver, torch's CUDA version and the way out; `device: cpu` still runs on the CPU; without a
    visible GPU, auto is the CPU. The GPU is read from nvidia-smi (a stand-in script here)."""
    from harness.core import devices
    from harness.core.errors import ConfigError
    from harness.train.setup import pick_device

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 525.60.13'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert devices.visible_nvidia_gpu() == "NVIDIA H100 80GB HBM3 (driver 525.60.13)"
    for name in ("auto", "cuda"):
        with pytest.raises(ConfigError) as err:
            pick_device(name)
        msg = str(err.value)
        assert "NVIDIA H100 80GB HBM3 (driver 525.60.13)" in msg and "CUDA 13.0" in msg and "--device cpu" in msg, msg
    assert pick_device("cpu") == torch.device("cpu")
    import harness.train.setup as setup

    monkeypatch.setattr(setup, "visible_nvidia_gpu", lambda: None)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no GPU is visible"):
        pick_device("cuda")


def _script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_preflight_steps_on_the_device_and_stops_on_an_unusable_gpu(monkeypatch, capsys, one_thread):
    """benchmarks/gpu_preflight.py (stage 1 of benchmarks/gpu_check.sh): on the stand-in device its new head and LoRA
    live on the device and one step runs; with a GPU shown that torch cannot use, it exits 3 with the reason."""
    import harness.train.setup as setup
    from tests.standin import STANDIN, StandInDevice

    preflight = _script("gpu_preflight")
    with StandInDevice():
        facts = preflight.main(["--device", str(STANDIN)])
    assert facts["new head on"] == facts["new LoRA on"] == str(STANDIN) and "PREFLIGHT OK" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(setup, "visible_nvidia_gpu", lambda: "NVIDIA H200 (driver 535.1)")
    with pytest.raises(SystemExit) as stop:
        preflight.main([])
    assert stop.value.code == 3 and "driver 535.1" in capsys.readouterr().out


def test_gpu_check_resume_stage_pieces(results, tmp_path, monkeypatch, one_thread):
    """benchmarks/gpu_resume_check.py: the kill waits for an epoch checkpoint newer than task 0's checkpoint (the
    stale epoch file of task 0 does not count), and a watched run records every step loop's host syncs and where
    AdamW's step counters live. (The whole stage, kill and resume included: `benchmarks/gpu_check.sh --cpu-dry`.)"""
    import json
    import os

    check = _script("gpu_resume_check")
    d = tmp_path / "run"
    d.mkdir()
    assert not check._mid_task_1(d)
    (d / "checkpoint.epoch.pt").write_text("task 0, last epoch")
    (d / "checkpoint.pt").write_text("task 0")
    os.utime(d / "checkpoint.epoch.pt", ns=(1, 1))
    assert not check._mid_task_1(d)
    (d / "checkpoint.epoch.pt").write_text("task 1, epoch 1")
    assert check._mid_task_1(d)

    args = check.argparse.Namespace(method="seq-lora", device="cpu", deterministic="on", overrides=json.dumps(
        {**FAST, "train.epochs": 1, "train.epoch_repeats": 1}))
    monkeypatch.setattr(check, "DEFAULT_OVERRIDES", {})
    import harness.train.trainer as trainer

    monkeypatch.setattr(trainer, "run_epoch", trainer.run_epoch)  # child() replaces it: undone after the test
    check.child(args, results, "clean")
    loops = json.loads((results / "syncs-clean.json").read_text())
    assert [e["task"] for e in loops] == [0, 1] and all(e["steps"] > 0 and e["syncs"] == 0 for e in loops)
    assert {d for e in loops for d in e["adam_step_on"]} <= {"cpu"}


def test_gpu_check_script_is_valid_and_calls_what_exists():
    """benchmarks/gpu_check.sh parses (bash -n), and every script and test file it runs exists."""
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = root / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    called = set(re.findall(r"(benchmarks/\w+\.py|tests/\w+\.py|\./install\.sh)", text))
    assert {"benchmarks/gpu_preflight.py", "benchmarks/gpu_throughput.py", "benchmarks/gpu_resume_check.py"} <= called
    assert all((root / c).exists() for c in called), called


def test_augmented_batches_reach_the_device_without_a_sync(one_thread):
    """ImageBank's gather path (augmented training batches: the image benchmarks' path, which the digits step-loop
    test does not take) from a host tensor and from a NumPy array (the memory-mapped cache), on the stand-in device:
    every copy is pinned and asynchronous, nothing is read back."""
    import numpy as np

    from harness.data.augment import TestTransform, TrainTransform
    from harness.data.image_bank import ImageBank
    from harness.data.spec import ImageSpec
    from tests.standin import STANDIN, StandInDevice

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 3, 20, 20), dtype=np.uint8)
    labels = rng.integers(0, 4, 24)
    spec = ImageSpec(size=16, channels=3, mean=[0.5] * 3, std=[0.5] * 3)
    train = TrainTransform(autoaugment="imagenet", size=16, flip=True)
    with StandInDevice():
        for source in (torch.from_numpy(images), images):
            bank = ImageBank(source, labels, spec, STANDIN, TestTransform(resize=18, center_crop=16), train, placement="host")
            batches = bank.iterate(np.arange(24), 8, torch.Generator().manual_seed(0), augment=(0, "aug"))
            next(batches)  # the first batch puts per-run constants on the device, once
            with SyncCounter(device_only=True) as c:
                rest = list(batches)
            assert len(rest) == 2 and all(x.device == STANDIN for x, _ in rest)
            assert c.events == [], f"{type(source).__name__} images: {sorted(set(c.events))}"
