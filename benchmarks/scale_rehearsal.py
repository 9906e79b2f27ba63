"""Cost growth at research scale, rehearsed on one machine: grid size, SLURM submission, data volume.

    python benchmarks/scale_rehearsal.py grid  --cells 1008 3006 10008   # dry-run / status / report over synthetic results
    python benchmarks/scale_rehearsal.py slurm --cells 2016              # submission against the dev cluster's limits
    python benchmarks/scale_rehearsal.py data  --images 3000             # a synthetic ImageNet-R-like folder → prepare
    python benchmarks/scale_rehearsal.py model --methods pm trm magmax   # ViT-B/16 state and checkpoint growth, 20 tasks
    python benchmarks/scale_rehearsal.py plot                            # docs/img/scale_rehearsal.png from the above

Every section appends its measurements to results/benchmarks/scale_rehearsal.json (one record per measurement, with
the command line, the machine's CPU count and load average) and prints them.

- grid: a grid of split-digits-2x5 × all 18 methods × N/18 seeds. One real tiny cell is run once; its result.json is
  copied into every cell's run directory (with that cell's config), and a ledger names a finished SLURM job for each.
  Then `clmerge grid --dry-run`, `clmerge status` and `clmerge report` run as subprocesses: wall time and peak RSS
  (the child's own rusage).
- slurm: the same grid shape, submitted with the dev-cluster profile (SLURM_CONF must name a running cluster; the
  dev cluster has MaxArraySize 101 and MaxSubmitJobs 150). Jobs are submitted held (sbatch -H) so that nothing runs,
  then cancelled: this measures submission only. Runs: pack 1 (one wave up to the queue limit, the rest left for a
  later rerun), the immediate rerun, `clmerge status` over the grid with its jobs in the queue, and pack 20.
- data: N JPEGs in 200 class folders named like ImageNet wnids, sizes drawn like web images (shorter side 300–500,
  aspect 0.75–1.33), smooth random content plus noise (JPEG quality 90), then `clmerge prepare imagenet-r-10
  --source DIR` into a private cache: wall time, images/s, peak RSS, cache bytes; then the pm protocol's train
  transform (harness.data.augment.train_batch, 1 thread) over up to 2,000 cached training images, images/s.
- model: each method (default: every registered one) in its own process, over imagenet-r-20's 20 tasks (10 classes
  each) with the trainer's own loop (`run_tasks`: begin_task, steps, end_task, evaluation, checkpoint.pt after every
  task) on ViT-B/16 (`vit-b16-random`: every weight, LoRA and head at real size), fed 32-px inputs (4 patches; the
  CPU could not run 20 tasks × every method at 224 px) and --per-class training images per class, 1 epoch. After
  tasks 5, 10 and 20: checkpoint.pt bytes, the method's state bytes (torch.save of its state_dict), the end_task
  seconds of that task and per training image, and the process's peak RSS; then whether a method that declares
  `constant_memory = True` kept its state size from task 5 to task 20. Sizes do not depend on the input size;
  times do (the token count is 5 instead of 197): they rank methods, they are not 224-px figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

OUT = ROOT / "results" / "benchmarks" / "scale_rehearsal.json"
FAST = {"backbone.preset": "vit-micro-test", "train.epochs": 1, "train.batch_size": 64}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def record(section: str, **values) -> dict:
    rec = {"section": section, **values, **machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(OUT.read_text()) if OUT.exists() else []
    OUT.write_text(json.dumps(old + [rec], indent=1) + "\n")
    print(json.dumps(rec), flush=True)
    return rec


def measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str, float]:
    """Run `cmd`; (wall seconds, peak RSS in MiB, its output, CPU seconds user + system). Fails loudly on a non-zero
    exit. On a shared machine CPU seconds are the steadier figure: wall time includes waiting for a core.

    Peak RSS comes from /usr/bin/time (GNU time's %M): not from this process's wait4, since Linux carries the RSS
    high-water mark of the forking process (this one, with torch loaded) into the child's across exec."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file.name, *cmd], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=env or ENV, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}")
        rss, user, system = rss_file.read().split()[-3:]
        return wall, int(rss) / 1024, p.stdout, float(user) + float(system)


def clmerge(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def write_grid(path: Path, name: str, n_cells: int) -> int:
    import yaml

    from harness.method.registry import method_names

    seeds = math.ceil(n_cells / len(method_names()))
    path.write_text(yaml.safe_dump({"name": name, "benchmarks": ["split-digits-2x5"], "methods": "all",
                                    "seeds": list(range(seeds)), "overrides": FAST}))
    return seeds * len(method_names())


# ---- grid size -----------------------------------------------------------------------------------------------------


def template_result(work: Path) -> dict:
    from harness.config import ExecConfig
    from harness.core.io import read_json
    from harness.resolve import resolve
    from harness.store import run_dir
    from harness.train.run import execute

    cfg = resolve("split-digits-2x5", "seq-lora", seed=0, overrides=FAST)
    execute(cfg, ExecConfig(progress=False, threads=1, device="cpu"), work)
    return read_json(run_dir(cfg, work) / "result.json")


def synthetic_results(cells, root: Path, template: dict) -> None:
    from harness.core.io import atomic_write_json
    from harness.dispatch.slurm_queue import _record
    from harness.store import run_dir

    ledger = {}
    for i, c in enumerate(cells):
        atomic_write_json(run_dir(c, root) / "result.json", {**template, "config": c.to_dict()})
        ledger[c.run_id()] = {"job_id": f"{1000 + i // 1000}_{i % 1000}", "submitted": "t", "grid": "scale",
                              "stdout": "", "stderr": ""}
    _record(root, ledger)


def bench_grid(sizes: list[int]) -> None:
    from harness.dispatch.grid import expand, load_grid

    work = Path(tempfile.mkdtemp(prefix="clmerge-scale-"))
    try:
        template = template_result(work / "template")
        for n in sizes:
            grid = work / f"scale{n}.yaml"
            n = write_grid(grid, f"scale{n}", n)
            root = work / f"results{n}"
            t0 = time.perf_counter()
            cells = expand(load_grid(str(grid)))
            t_expand = time.perf_counter() - t0
            t0 = time.perf_counter()
            synthetic_results(cells, root, template)
            t_write = time.perf_counter() - t0
            for what, args in (("dry-run", ("grid", str(grid), "--dry-run")), ("status", ("status", str(grid))),
                               ("report", ("report", str(grid)))):
                wall, rss, out, cpu = measured(clmerge("--results", str(root), *args))
                record("grid", command=f"clmerge {what}", cells=n, wall_s=round(wall, 2), cpu_s=round(cpu, 2), peak_rss_mib=round(rss),
                       in_process_expand_s=round(t_expand, 2), synthetic_write_s=round(t_write, 2))
            shutil.rmtree(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- SLURM submission ----------------------------------------------------------------------------------------------


def bench_slurm(n_cells: int) -> None:
    from harness.dispatch.grid import expand, load_grid
    from harness.dispatch.slurm import load_profile, resolve_limits, submit
    from harness.dispatch.slurm_queue import slurm_available

    why = slurm_available()
    if why:
        raise SystemExit(f"slurm section: {why}")
    work = Path(tempfile.mkdtemp(prefix="clmerge-scale-slurm-"))
    try:
        grid = work / "submit.yaml"
        n = write_grid(grid, "submit", n_cells)
        cells = expand(load_grid(str(grid)))
        for pack in (1, 20):
            root = work / f"results-pack{pack}"
            profile = load_profile("dev-cluster")
            profile.pack, profile.extra_sbatch = pack, {**profile.extra_sbatch, "hold": True}  # held: nothing runs
            limits = resolve_limits(profile, log=lambda _: None)
            try:
                t0 = time.perf_counter()
                sub = submit(cells, profile, root, grid="submit", log=lambda _: None, limits=limits)
                t_submit = time.perf_counter() - t0
                record("slurm", run="first submission", cells=n, pack=pack, submit_s=round(t_submit, 2),
                       arrays=len(sub.arrays), cells_submitted=len(sub.submitted), cells_remaining=len(sub.remaining),
                       limits=limits.describe())
                if pack == 1:
                    t0 = time.perf_counter()
                    again = submit(cells, profile, root, grid="submit", log=lambda _: None, limits=limits)
                    record("slurm", run="immediate rerun (queue full)", cells=n, pack=pack,
                           submit_s=round(time.perf_counter() - t0, 2), arrays=len(again.arrays),
                           cells_submitted=len(again.submitted), cells_remaining=len(again.remaining))
                    wall, rss, _, cpu = measured(clmerge("status", str(grid)), env={**ENV, "CLMERGE_RESULTS": str(root)})
                    record("slurm", run="clmerge status, jobs queued", cells=n, pack=pack, wall_s=round(wall, 2), cpu_s=round(cpu, 2),
                           peak_rss_mib=round(rss))
            finally:
                subprocess.run(["scancel", "-u", os.environ.get("USER", "root")], check=False)
                time.sleep(2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- data volume ---------------------------------------------------------------------------------------------------


def make_folder(root: Path, n_images: int, n_classes: int = 200, seed: int = 0) -> int:
    """`n_images` JPEGs in `n_classes` wnid-named folders; returns the bytes written."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n_images):
        cls = f"n{10000000 + i % n_classes:08d}"
        short = int(rng.integers(300, 501))
        aspect = float(rng.uniform(0.75, 1.33))
        w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
        # smooth content (a coarse random grid, upsampled) plus noise: compresses like a photo, not like flat colour
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 12, size=img.shape), 0, 255).astype(np.uint8)
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"img_{i:06d}.jpg"
        Image.fromarray(img).save(f, quality=90)
        total += f.stat().st_size
    return total


def bench_data(n_images: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="clmerge-scale-data-"))
    try:
        folder, cache = work / "imagenet-r-like", work / "cache"
        t0 = time.perf_counter()
        jpeg_bytes = make_folder(folder, n_images)
        t_make = time.perf_counter() - t0
        env = {**ENV, "CLMERGE_CACHE": str(cache)}
        wall, rss, out, cpu = measured(clmerge("prepare", "imagenet-r-10", "--source", str(folder)), env=env)
        cache_bytes = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        stream_ips = stream_rate(cache)
        record("data", images=n_images, classes=200, jpeg_mib=round(jpeg_bytes / 2**20, 1), generate_s=round(t_make, 1),
               prepare_s=round(wall, 1), prepare_cpu_s=round(cpu, 1), prepare_images_per_s=round(n_images / wall, 1), prepare_peak_rss_mib=round(rss),
               cache_mib=round(cache_bytes / 2**20, 1), stream_pm_train_images_per_s=stream_ips)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stream_rate(cache: Path, batch: int = 64, max_images: int = 2000) -> float:
    """Images/s of the pm protocol's train transform over the prepared cache (memmap → train_batch, 1 thread), on
    the first `max_images` training images in random-index batches, after one warm-up batch."""
    import numpy as np
    import torch

    from harness.data.augment import train_batch
    from harness.data.protocol import load_protocol

    torch.set_num_threads(1)
    images = np.load(next(cache.rglob("train_images.npy")), mmap_mode="r")
    train = load_protocol("pm").style("imagenet", "imagenet-r-10").train
    gen = torch.Generator().manual_seed(0)
    n = min(len(images), max_images)
    order = torch.randperm(n, generator=gen).numpy()
    train_batch(torch.from_numpy(images[np.sort(order[:batch])]), train, gen, mean=[0.5] * 3, std=[0.5] * 3)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        u8 = torch.from_numpy(images[np.sort(order[start : start + batch])])
        train_batch(u8, train, gen, mean=[0.5] * 3, std=[0.5] * 3)
    return round(n / (time.perf_counter() - t0), 1)


# ---- model size ----------------------------------------------------------------------------------------------------

MODEL_PRESET = "vit-b16-random-32px"  # registered in this process only: ViT-B/16's weights at real size, 32-px input
MARKS = (5, 10, 20)


def _register_32px_preset() -> None:
    from dataclasses import replace

    from harness.model.backbone import PRESETS

    base = PRESETS["vit-b16-random"]
    PRESETS[MODEL_PRESET] = replace(base, name=MODEL_PRESET, timm_kwargs={**base.timm_kwargs, "img_size": 32},
                                    description=base.description + " (32-px input: scale rehearsal only)")


def model_child(method: str, per_class: int, out: Path) -> None:
    """One method over imagenet-r-20 on ViT-B/16 (32-px input) in this process; writes its records to `out`."""
    import io
    import resource

    import numpy as np
    import torch

    from harness.config import ExecConfig
    from harness.data.image_bank import ImageBank
    from harness.data.spec import ImageSpec
    from harness.data.stream import build_stream
    from harness.method.base import MethodContext
    from harness.method.registry import get_method
    from harness.core.schema import from_dict
    from harness.data.protocol import run_spec
    from harness.model.backbone import CLModel
    from harness.resolve import resolve
    from harness.train.setup import Setup
    from harness.train.trainer import run_tasks

    torch.set_num_threads(1)
    _register_32px_preset()
    cfg = resolve("imagenet-r-20", method, seed=0, overrides={"backbone.preset": MODEL_PRESET, "train.epochs": 1,
                                                               "train.epoch_repeats": 1, "train.batch_size": 32})
    spec = run_spec(cfg)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(spec.num_classes), per_class)
    test_labels = np.arange(spec.num_classes)  # one test image per class
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    test_images = rng.integers(0, 256, (len(test_labels), 3, 32, 32), dtype=np.uint8)
    image = ImageSpec(size=32, channels=3, mean=list(spec.image.mean), std=list(spec.image.std))
    stream = build_stream(spec, cfg.order_seed, labels, test_labels)
    device = torch.device("cpu")
    model = CLModel(cfg.backbone)
    cls = get_method(method)
    m = cls(from_dict(cls.Params, dict(cfg.method_params), method), MethodContext(config=cfg, stream=stream, device=device))
    train_bank = ImageBank(images, stream.remap(labels), image, device)  # no transforms: plain 32-px views
    m.ctx.train_bank = train_bank
    s = Setup(cfg, spec, None, stream, device, model, m, train_bank, ImageBank(test_images, stream.remap(test_labels), image, device))
    end_task_s: list[float] = []
    original = m.end_task

    def timed_end_task(*a, **k):
        t0 = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            end_task_s.append(time.perf_counter() - t0)

    m.end_task = timed_end_task
    exec_cfg = ExecConfig(progress=False, device="cpu", prefetch="off", compile="off", background_checkpoints=False)
    recs, state = [], None
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "checkpoint.pt"
        for mark in MARKS:
            t0 = time.perf_counter()
            state = run_tasks(s, exec_cfg, checkpoint=ckpt, stop_after=mark, state=state)
            buf = io.BytesIO()
            torch.save(m.state_dict(), buf)
            n_train = len(stream.tasks[mark - 1].train_indices)
            recs.append({"method": method, "tasks": mark, "checkpoint_bytes": ckpt.stat().st_size,
                         "method_state_bytes": buf.tell(), "end_task_s": round(end_task_s[-1], 3),
                         "end_task_s_per_image": round(end_task_s[-1] / n_train, 4),
                         "tasks_wall_s": round(time.perf_counter() - t0, 1),
                         "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                         "constant_memory": bool(cls.constant_memory), "train_images_per_task": n_train,
                         "input_px": 32})
    out.write_text(json.dumps(recs))


def bench_model(methods: list[str] | None, per_class: int) -> None:
    from harness.method.registry import method_names

    for method in methods or method_names():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "recs.json"
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, __file__, "model-child", method, str(per_class), str(out)], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if p.returncode != 0 or not out.exists():
                record("model", method=method, error=p.stdout[-1500:])
                continue
            recs = json.loads(out.read_text())
        grew = recs[-1]["method_state_bytes"] - recs[0]["method_state_bytes"]
        for r in recs:
            record("model", **r)
        record("model-check", method=method, constant_memory=recs[0]["constant_memory"],
               state_bytes_5_to_20=[recs[0]["method_state_bytes"], recs[-1]["method_state_bytes"]],
               # a few bytes of pickled bookkeeping (task counters, records) may differ; a tensor per task does not
               claim_holds=(not recs[0]["constant_memory"]) or grew <= 4096,
               process_wall_s=round(time.perf_counter() - t0, 1))


# ---- plot ----------------------------------------------------------------------------------------------------------


def plot(out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in json.loads(OUT.read_text()) if r["section"] == "grid"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, cmd in enumerate(("clmerge dry-run", "clmerge status", "clmerge report")):
        pts = sorted((r["cells"], r["wall_s"], r["cpu_s"], r["peak_rss_mib"]) for r in recs if r["command"] == cmd)
        if not pts:
            continue
        xs, ts, cs, ms = zip(*pts)
        ax_t.plot(xs, cs, "o-", color=f"C{i}", label=f"{cmd.split()[1]} (CPU)")
        ax_t.plot(xs, ts, "x--", color=f"C{i}", alpha=0.6, label=f"{cmd.split()[1]} (wall)")
        ax_m.plot(xs, ms, "o-", color=f"C{i}", label=cmd.split()[1])
    ax_t.axhline(10, color="grey", ls=":", lw=1)
    ax_t.set(xlabel="cells", ylabel="seconds", title="grid commands: CPU and wall time")
    ax_m.set(xlabel="cells", ylabel="peak RSS (MiB)", title="grid commands: memory")
    ax_t.legend(fontsize=7, ncol=2, loc="upper left")
    ax_m.legend(fontsize=7, loc="lower right")
    ax_m.set_ylim(bottom=0)
    for ax in (ax_t, ax_m):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    print(f"wrote {out_png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="section", required=True)
    g = sub.add_parser("grid")
    g.add_argument("--cells", type=int, nargs="+", default=[1008, 3006, 10008])
    s = sub.add_parser("slurm")
    s.add_argument("--cells", type=int, default=2016)
    d = sub.add_parser("data")
    d.add_argument("--images", type=int, default=3000)
    mo = sub.add_parser("model")
    mo.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    mo.add_argument("--per-class", type=int, default=2, help="training images per class (10 classes a task)")
    mc = sub.add_parser("model-child")
    mc.add_argument("method")
    mc.add_argument("per_class", type=int)
    mc.add_argument("out", type=Path)
    p = sub.add_parser("plot")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "scale_rehearsal.png")
    args = ap.parse_args()
    if args.section == "grid":
        bench_grid(args.cells)
    elif args.section == "slurm":
        bench_slurm(args.cells)
    elif args.section == "data":
        bench_data(args.images)
    elif args.section == "model":
        bench_model(args.methods, args.per_class)
    elif args.section == "model-child":
        model_child(args.method, args.per_class, args.out)
    else:
        plot(args.out)


if __name__ == "__main__":
    main()
