"""Training throughput of the real loop (seq-lora and P&M) and the ImageNet-R-10 full-schedule wall time it implies.

Synthetic uint8 images (stored side 256, as the prepared cache stores ImageNet-like data; a NumPy array, the type of
the cache's memory map, so batches take ImageBank's cache path: gather → device → the protocol's augmentation) feed
the trainer's own step loop (`harness.train.trainer.run_epoch`) with the imagenet-r-10 configuration under the `pm`
protocol (AutoAugment + RandomResizedCrop 224, batch 256, 10 epochs × 10 passes, temperature 30) on the
`vit-b16-random` backbone (ViT-B/16 architecture, seeded random init: no download; speed does not depend on the
weights). Printed per method:

- img/s from the images actually stepped (an epoch's last batch may be partial: task 0 of the default data has 400
  images, batches of 256 and 144) and ms/step of the timed steps, peak device memory;
- compile seconds: the first warm-up step (compilation included) less one timed step; the other warm-up steps untimed;
- host syncs in the timed loop (CUDA: `torch.cuda.set_sync_debug_mode("warn")`, counted; 0 expected);
- MFU: FLOPs per image of one training step (forward + backward, counted by torch.utils.flop_counter) × img/s over the
  device's dense bf16 peak (read from the device's name, `BF16_PEAK_TFLOPS`, or --peak-tflops);
- end-of-task seconds (P&M: the Fisher pass + merge; seq-lora: the fold), scaled to ImageNet-R-10's task size;
- epoch-checkpoint seconds on the training's path (snapshot; the write itself is on a background thread), and
  inline; evaluation img/s with the test transform computed, and with the evaluation view cached;
- the extrapolated full schedule: 10 tasks × 10 epochs × 10 passes over 2,400 images (ImageNet-R's 30,000 images,
  80 % train, in 10 tasks) at the measured img/s, plus 10 end-of-task passes, 100 epoch checkpoints and the
  evaluations (after task t: the test images of tasks ≤ t, 600 per task); and P&M / seq-lora, measured --repeats
  times (the methods interleaved), printed as the median and its spread (min–max).

The step loop runs with the trainer's own settings: its optimiser, its prefetch choice (`ExecConfig.prefetch`, on for
CUDA), its compile choice, and no TF32 (the trainer does not enable it).

    python benchmarks/gpu_throughput.py                        # on the GPU (about 5 minutes on one H100/H200)
    python benchmarks/gpu_throughput.py --images 12800         # 1,280 images in task 0: every batch of 256 full
    python benchmarks/gpu_throughput.py --device cpu --tiny    # a 2-block 16-px model on 20-px images: checks the script
    python benchmarks/gpu_throughput.py --compile off          # the eager step loop (the trainer compiles on CUDA)
    python benchmarks/gpu_throughput.py --fused-qkv            # q|k|v and the LoRA down-projections in two GEMMs
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from harness.core.io import BackgroundWriter  # noqa: E402
from harness.core.precision import autocast  # noqa: E402
from harness.core.schema import from_dict  # noqa: E402
from harness.data.augment import TestTransform  # noqa: E402
from harness.data.image_bank import ImageBank  # noqa: E402
from harness.data.prefetch import Prefetcher, use_prefetch  # noqa: E402
from harness.data.protocol import run_spec  # noqa: E402
from harness.data.spec import ImageSpec  # noqa: E402
from harness.data.stream import build_stream  # noqa: E402
from harness.method.base import MethodContext, TaskData  # noqa: E402
from harness.method.registry import get_method  # noqa: E402
from harness.model.backbone import CLModel  # noqa: E402
from harness.resolve import resolve  # noqa: E402
from harness.train import compile as compiling  # noqa: E402
from harness.train.checkpoints import save_epoch_checkpoint  # noqa: E402
from harness.train.setup import Setup, pick_device  # noqa: E402
from harness.train.trainer import EpochWatch, evaluate, make_optimizer, make_scheduler, run_epoch  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s (half the "with sparsity" figures);
# the first entry whose key is in the device's name wins, so the NVL/PCIe variants come before the SXM name. torch
# names them e.g. "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA H200 NVL".
BF16_PEAK_TFLOPS = [
    ("H200 NVL", 835.0), ("H200", 989.0),  # H200 data sheet: SXM 1,979 / NVL 1,671 with sparsity
    ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),  # H100 data sheet: NVL 1,671 / PCIe 1,513 / SXM 1,979
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
]
# ImageNet-R-10 under the pm protocol (datasets/imagenet-r-10.yaml, datasets/protocols/pm.yaml)
IR_TASKS, IR_TRAIN_PER_TASK, IR_TEST_PER_TASK, IR_EPOCHS, IR_PASSES = 10, 2400, 600, 10, 10


def peak_for_name(name: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU named `name` (torch.cuda.get_device_name), None if unknown."""
    return next((tflops for key, tflops in BF16_PEAK_TFLOPS if key in name), None)


def device_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (given)"
    if device.type != "cuda":
        return None, "no bf16 peak for this device (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    tflops = peak_for_name(name)
    if tflops is None:
        return None, f"{name}: unknown bf16 peak (pass --peak-tflops)"
    return tflops * 1e12, f"{name}: {tflops:g} TFLOP/s dense bf16 (data sheet)"


class Tap:
    """Passes batches through and counts the images in them: what a step loop actually stepped."""

    def __init__(self, batches):
        self.batches, self.images, self.steps = batches, 0, 0

    def __iter__(self):
        for x, y in self.batches:
            self.images += int(x.shape[0])
            self.steps += 1
            yield x, y


@contextlib.contextmanager
def host_syncs(device: torch.device):
    """Counts the host↔device synchronisations CUDA reports inside the block (`set_sync_debug_mode("warn")`): a
    list that holds one entry per warning when the block ends. Empty off CUDA (nothing reports them there)."""
    import warnings

    found: list[str] = []
    if device.type != "cuda":
        yield found
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(0)
    found.extend(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup(method: str, args, device: torch.device) -> Setup:
    """The trainer's Setup for imagenet-r-10 (pm protocol) on synthetic images of 200 classes."""
    overrides = {"backbone.preset": "vit-micro-rgb-test" if args.tiny else "vit-b16-random"}
    if args.batch_size:
        overrides["train.batch_size"] = args.batch_size
    cfg = resolve("imagenet-r-10", method, seed=0, overrides=overrides)
    spec = run_spec(cfg)
    train_t, test_t, image = spec.train_transform, spec.test_transform, spec.image
    stored = 256
    if args.tiny:  # 20-px stored images, 16-px model input, same transforms otherwise
        stored, train_t, test_t = 20, replace(train_t, size=16), TestTransform(resize=18, center_crop=16)
        image = ImageSpec(size=16, channels=3, mean=list(image.mean), std=list(image.std))
    per_class = max(1, args.images // spec.num_classes)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(spec.num_classes), per_class)
    images = rng.integers(0, 256, (len(labels), 3, stored, stored), dtype=np.uint8)
    test_labels = np.repeat(np.arange(spec.num_classes), max(1, per_class // 4))
    stream = build_stream(spec, cfg.order_seed, labels, test_labels)
    model = CLModel(cfg.backbone).to(device)
    cls = get_method(method)
    m = cls(from_dict(cls.Params, dict(cfg.method_params), method), MethodContext(config=cfg, stream=stream, device=device))
    train_bank = ImageBank(images, stream.remap(labels), image, device, test_t, train_t)
    test_images = rng.integers(0, 256, (len(test_labels), 3, stored, stored), dtype=np.uint8)
    test_bank = ImageBank(test_images, stream.remap(test_labels), image, device, test_t, cache_eval_view=True)
    m.ctx.train_bank = train_bank
    return Setup(cfg, spec, None, stream, device, model, m, train_bank, test_bank)


def endless(s: Setup, indices: np.ndarray, batch_size: int):
    g = torch.Generator().manual_seed(0)
    for epoch in itertools.count():
        yield from s.train_bank.iterate(indices, batch_size, g, augment=(0, "bench", epoch))


def measure(method: str, args, device: torch.device) -> dict:
    s = setup(method, args, device)
    task = s.stream.tasks[0]
    s.method.begin_task(s.model, task)
    opt = make_optimizer(s.method, s.model, task, s.cfg.train)  # the trainer's optimiser
    heads = {id(p) for p in s.model.heads.parameters()}
    bs = s.cfg.train.batch_size
    batches = endless(s, task.train_indices, bs)
    s.model.train()
    s.model.set_fused_qkv(args.fused_qkv)
    if args.compiled:  # as the trainer does: once per run, full batches only
        s.model.compile_features(compiling.BACKEND)

    def steps(n: int) -> Tap:
        """`n` steps of the trainer's loop (its prefetch choice included), timed to the device's end."""
        tap = Tap(itertools.islice(batches, n))
        feed = Prefetcher(tap, device) if args.prefetch else tap
        with s.model.compiled(bs):
            run_epoch(s, task, opt, feed, EpochWatch(norm_steps=0), heads)
        sync(device)
        return tap

    start = time.perf_counter()
    steps(1)  # compiles (when on) and runs one step
    first_s = time.perf_counter() - start
    if args.warmup > 1:
        steps(args.warmup - 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with host_syncs(device) as syncs:
        timed = steps(args.steps)
    elapsed = time.perf_counter() - start
    step_s = elapsed / timed.steps
    img_s = timed.images / elapsed
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    from torch.utils.flop_counter import FlopCounterMode

    x, y = next(batches)
    with FlopCounterMode(display=False) as counter:
        with autocast(device):
            loss = s.method.training_loss(s.model, x, y, task)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops_per_image = counter.get_total_flops() / x.shape[0]

    with tempfile.TemporaryDirectory() as tmp:
        sched = make_scheduler(opt, s.cfg.train)
        start = time.perf_counter()
        save_epoch_checkpoint(Path(tmp) / "c.epoch.pt", s, task, 1, opt, sched, torch.Generator(), {})
        ckpt_inline_s = time.perf_counter() - start
        writer = BackgroundWriter()  # as the trainer writes it: only the snapshot is on the training's path
        start = time.perf_counter()
        save_epoch_checkpoint(Path(tmp) / "c.epoch.pt", s, task, 1, opt, sched, torch.Generator(), {}, writer)
        ckpt_s = time.perf_counter() - start
        writer.wait()

    n_task = len(task.train_indices)
    sync(device)
    start = time.perf_counter()
    s.method.end_task(s.model, task, TaskData(s.train_bank, task.train_indices))
    sync(device)
    end_task_s = time.perf_counter() - start

    n_test = len(task.test_indices)
    eval_ips = []
    for _ in range(2):  # first pass: test transform computed (and cached, if it fits); second: read from the cache
        start = time.perf_counter()
        evaluate(s.method.eval_model(s.model), s.test_bank, s.stream, 0, s.cfg.train.eval_batch_size)
        sync(device)
        eval_ips.append(n_test / (time.perf_counter() - start))
    return {"step_s": step_s, "img_s": img_s, "images": timed.images, "steps": timed.steps,
            "compile_s": max(first_s - step_s, 0.0), "host_syncs": len(syncs),
            "flops": flops_per_image * bs, "flops_per_image": flops_per_image, "peak_gib": peak_mem, "ckpt_s": ckpt_s,
            "ckpt_inline_s": ckpt_inline_s, "end_task_s": end_task_s * IR_TRAIN_PER_TASK / n_task,
            "eval_img_s": eval_ips[0], "eval_cached_img_s": eval_ips[1]}


def full_schedule_s(r: dict) -> float:
    """ImageNet-R-10, pm protocol: training image-steps at the measured rate + end-of-task passes + checkpoints + evals."""
    train = IR_TASKS * IR_EPOCHS * IR_PASSES * IR_TRAIN_PER_TASK / r["img_s"]
    # after task t: task t's test images fresh, tasks < t from the evaluation-view cache
    evals = IR_TASKS * IR_TEST_PER_TASK / r["eval_img_s"]
    evals += sum(t * IR_TEST_PER_TASK for t in range(IR_TASKS)) / r["eval_cached_img_s"]
    return train + IR_TASKS * r["end_task_s"] + IR_TASKS * IR_EPOCHS * r["ckpt_s"] + evals


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--tiny", action="store_true", help="a 2-block 16-px model on 20-px images (CPU check, < 2 min)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 50; tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, the compiling one included (at least 1; default 10; tiny 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the pm protocol's 256 (tiny: 16)")
    p.add_argument("--images", type=int, default=None, help="synthetic training images (default 4000; tiny 400)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--methods", default="seq-lora,pm")
    p.add_argument("--compile", default="auto", help="torch.compile of the training forward: auto (on for CUDA) | on | off")
    p.add_argument("--prefetch", default="auto", help="data prefetch thread, as ExecConfig.prefetch: auto (on for CUDA) | on | off")
    p.add_argument("--repeats", type=int, default=None, help="measurements per method, interleaved (default 3; tiny 2)")
    p.add_argument("--fused-qkv", action="store_true",
                   help="one q|k|v GEMM and one stacked LoRA-down GEMM per block (CLModel.set_fused_qkv), to compare")
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else 50)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 10)
    args.batch_size = args.batch_size or (16 if args.tiny else None)
    args.images = args.images or (400 if args.tiny else 4000)
    args.repeats = args.repeats or (2 if args.tiny else 3)
    device = pick_device(args.device)
    peak, peak_note = device_peak(device, args.peak_tflops)
    args.compiled = compiling.use_compile(args.compile, device)  # validated once, before any model is built
    args.prefetch = use_prefetch(args.prefetch, device)
    print(f"device {device} | {peak_note} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"compile {'on' if args.compiled else 'off'} | prefetch {'on' if args.prefetch else 'off'} | "
          f"fused q|k|v {'on' if args.fused_qkv else 'off'} | "
          f"TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    methods = args.methods.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for _ in range(args.repeats):  # interleaved: a drift of the machine shows in every method alike
        for method in methods:
            r = measure(method, args, device)
            r["mfu"] = r["flops_per_image"] * r["img_s"] / peak if peak else float("nan")
            r["full_s"] = full_schedule_s(r)
            runs[method].append(r)
    results = {m: dict(median_run(rs), repeats=rs) for m, rs in runs.items()}
    cols = ("img/s", "images", "ms/step", "MFU %", "peak GiB", "compile s", "host syncs", "end-task s/task",
            "ckpt s (inline)", "eval img/s (cached)", "IR-10 full min")
    print("| method | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for method, r in results.items():
        fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.4g}"  # noqa: E731
        vals = (fmt(r["img_s"]), str(r["images"]), fmt(r["step_s"] * 1e3), fmt(100 * r["mfu"]), fmt(r["peak_gib"]),
                fmt(r["compile_s"]), str(r["host_syncs"]), fmt(r["end_task_s"]),
                f"{fmt(r['ckpt_s'])} ({fmt(r['ckpt_inline_s'])})", f"{fmt(r['eval_img_s'])} ({fmt(r['eval_cached_img_s'])})",
                fmt(r["full_s"] / 60))
        print(f"| {method} | " + " | ".join(vals) + " |")
    if "pm" in results and "seq-lora" in results:
        ratios = [p["full_s"] / q["full_s"] for p, q in zip(runs["pm"], runs["seq-lora"])]
        results["pm_over_seq_lora"] = statistics.median(ratios)
        results["pm_over_seq_lora_runs"] = ratios
        print(f"P&M / seq-lora full-schedule wall time: median {statistics.median(ratios):.3f} over {len(ratios)} "
              f"repeats, spread {min(ratios):.3f}–{max(ratios):.3f}")
    return results


def median_run(runs: list[dict]) -> dict:
    """The repeat whose img/s is the median (lower median for an even count): one real measurement, not a blend."""
    return sorted(runs, key=lambda r: r["img_s"])[(len(runs) - 1) // 2]


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
