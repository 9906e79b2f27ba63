"""Images per second delivered to the model: clmerge's cached path vs the common per-sample PIL path.

Both paths read the same JPEG images and deliver float batches (normalised with mean=std=0.5) on the training device:

- common: torchvision.datasets.ImageFolder + torchvision.transforms on PIL images (decode, per-sample AutoAugment /
  RandomResizedCrop / flip, ToTensor, Normalize) in a shuffled torch DataLoader with `--workers` processes.
- clmerge: the images decoded once into a uint8 memmap [N, 3, 256, 256] (harness.data.prepare's storage rule: shorter side
  → 256 bicubic, centre crop; its `decode_image` is used), then per batch: random indices → gather from the memmap →
  tensor on the device → harness.data.augment.train_batch → normalise. The one-off preparation is timed separately.

Each path is timed from the end of a short warm-up (worker start-up, first batches) until at least one full epoch of
images has been delivered after it. Protocols: `pilot` (RRC(224, scale 0.05–1) + flip) and `pm` (ImageNet AutoAugment →
RRC(224, scale 0.08–1)), as datasets/protocols/<protocol>.yaml define them for imagenet-r-10.

    python benchmarks/data_throughput.py            # 2000 generated images, batch 256
    python benchmarks/data_throughput.py --quick    # a smaller, faster run
    python benchmarks/data_throughput.py --protocols pm --autoaugment batched   # AutoAugment's whole-batch path
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from harness.data.augment import TrainTransform, train_batch  # noqa: E402
from harness.data.protocol import load_protocol  # noqa: E402

STORED = 256
MEAN = STD = 0.5


# ------------------------------------------------------------------------------------------------ synthetic JPEGs


def _make_image(path: Path, seed: int) -> None:
    """A JPEG of a realistic size (~500×375, varying; some portrait) with smooth structure, shapes and noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(400, 640)), int(rng.integers(300, 480))
    if rng.random() < 0.25:
        w, h = h, w
    low = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 10))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    arr = np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def generate_folder(root: Path, n: int, classes: int, seed: int, workers: int) -> None:
    """`root/<class>/<i>.jpg`, n images over `classes` folders, deterministic in `seed`."""
    paths = []
    for i in range(n):
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"{i:06d}.jpg")
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while encoding
        list(pool.map(lambda a: _make_image(a[1], seed * 1_000_003 + a[0]), enumerate(paths)))


# ------------------------------------------------------------------------------------------------ one-off cache


def decode_to_memmap(files: list[Path], out: Path, workers: int) -> np.ndarray:
    """Decode `files` into a uint8 memmap [N, 3, 256, 256] with harness.data.prepare's storage rule (its decode_image)."""
    from harness.data.prepare import decode_image

    images = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(files), 3, STORED, STORED))

    def work(i: int) -> None:
        images[i] = decode_image(str(files[i]), STORED)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(len(files))))
    images.flush()
    del images
    return np.load(out, mmap_mode="r")


# ------------------------------------------------------------------------------------------------ the two paths


def common_loader(root: Path, train: TrainTransform, batch: int, workers: int, device: torch.device, seed: int):
    """The usual per-sample pipeline: ImageFolder + torchvision.transforms on PIL images in a DataLoader."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    interp = T.InterpolationMode(train.interpolation)
    steps: list = []
    if train.autoaugment != "none":
        steps.append(
            T.AutoAugment(T.AutoAugmentPolicy(train.autoaugment), interpolation=T.InterpolationMode(train.autoaugment_interpolation))
        )
    steps.append(T.RandomResizedCrop(train.size, scale=tuple(train.scale), ratio=tuple(train.ratio), interpolation=interp))
    if train.flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize([MEAN] * 3, [STD] * 3)]
    dataset = ImageFolder(str(root), transform=T.Compose(steps))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )


def common_batches(loader, device: torch.device) -> Iterator[torch.Tensor]:
    while True:  # epochs back to back; persistent workers carry over
        for x, _ in loader:
            yield x.to(device, non_blocking=True)


def clmerge_batches(
    cache: np.ndarray, train: TrainTransform, batch: int, device: torch.device, seed: int, aa_path: str = "auto"
) -> Iterator[torch.Tensor]:
    """Random-index batches from the memmap → device → train_batch → normalise (what a training loop would do)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(cache)
    while True:
        order = torch.randperm(n, generator=gen).numpy()
        for start in range(0, n, batch):
            idx = np.sort(order[start : start + batch])  # sorted reads are sequential on disk; the set is what matters
            u8 = torch.from_numpy(cache[idx])
            if device.type == "cuda":
                u8 = u8.pin_memory().to(device, non_blocking=True)
            yield train_batch(u8, train, gen, mean=[MEAN] * 3, std=[STD] * 3, autoaugment_path=aa_path)  # normalisation fused in


def measure(batches: Iterator[torch.Tensor], epoch_images: int, warmup_batches: int, device: torch.device) -> tuple[int, float]:
    """(images, seconds) delivered after `warmup_batches`, until at least one epoch's worth of images has arrived."""
    for _ in range(warmup_batches):
        next(batches)
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    seen, t0 = 0, time.perf_counter()
    while seen < epoch_images:
        seen += next(batches).shape[0]
    sync()
    return seen, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    cpus = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="number of generated JPEGs (default 2000)")
    ap.add_argument("--folder", type=Path, help="use this class-folder tree root/<class>/<img> instead of generating")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=cpus, help=f"DataLoader workers for the common path (default {cpus})")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--protocols", nargs="+", default=["pilot", "pm"], choices=["pilot", "pm", "inflora"])
    ap.add_argument("--warmup", type=int, default=2, help="batches excluded from timing per path (default 2)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads for the clmerge path (default: torch's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--autoaugment", default="auto", choices=["auto", "grouped", "batched"],
                    help="AutoAugment implementation of the clmerge path (default auto: grouped on CPU, batched elsewhere; "
                    "benchmarks/autoaugment_ops.py compares the two alone)")
    ap.add_argument("--quick", action="store_true", help="600 images, 1 warm-up batch: a fast smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.warmup = min(args.images, 600), 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))

    import PIL
    import torchvision

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {cpus} CPUs, torch threads {torch.get_num_threads()}, load average {load} (other processes"
          f" share these CPUs), device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"versions: torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")

    tmp = Path(tempfile.mkdtemp(prefix="clmerge-throughput-"))
    try:
        if args.folder is None:
            root = tmp / "images"
            t0 = time.perf_counter()
            generate_folder(root, args.images, classes=10, seed=args.seed, workers=cpus)
            print(f"generated {args.images} JPEGs (400–640 × 300–480 px, q90) in {time.perf_counter() - t0:.1f} s")
        else:
            root = args.folder
        from torchvision.datasets import ImageFolder

        files = [Path(p) for p, _ in ImageFolder(str(root)).samples]  # same files, same order as the common path
        n = len(files)
        t0 = time.perf_counter()
        cache = decode_to_memmap(files, tmp / "cache.npy", workers=cpus)
        prep = time.perf_counter() - t0
        print(f"prepare (one-off, not in the rates): {n} images → uint8 memmap {tuple(cache.shape)} "
              f"({cache.nbytes / 2**20:.0f} MiB) in {prep:.1f} s = {n / prep:.0f} img/s with {cpus} threads")
        print(f"batch {args.batch}, DataLoader workers {args.workers}, warm-up {args.warmup} batches, "
              f"≥ 1 epoch ({n} images) timed per path; both paths normalise (mean=std=0.5) and deliver to {device}; "
              f"clmerge AutoAugment path {args.autoaugment}")
        print()
        rows = []
        for protocol in args.protocols:
            train = load_protocol(protocol).style("imagenet", "imagenet-r-10").train
            loader = common_loader(root, train, args.batch, args.workers, device, args.seed)
            common = measure(common_batches(loader, device), n, args.warmup, device)
            del loader  # stop its workers before timing the other path
            ours = measure(clmerge_batches(cache, train, args.batch, device, args.seed, args.autoaugment), n, args.warmup, device)
            rows.append((protocol, common, ours))
        print(f"{'protocol':<9} {'path':<34} {'images':>7} {'seconds':>8} {'img/s':>8}")
        for protocol, (ci, cs), (oi, os_) in rows:
            print(f"{protocol:<9} {'common (ImageFolder+PIL, DataLoader)':<34} {ci:>7} {cs:>8.2f} {ci / cs:>8.0f}")
            print(f"{protocol:<9} {'clmerge (memmap + train_batch)':<34} {oi:>7} {os_:>8.2f} {oi / os_:>8.0f}")
            print(f"{protocol:<9} {'ratio clmerge / common':<34} {'':>7} {'':>8} {(oi / os_) / (ci / cs):>7.1f}×")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
