"""AutoAugment per batch: torch ops and time of the grouped path vs the whole-batch path (harness.data.augment).

For each policy, one batch of `--batch` uint8 images of `--size` px (structured synthetic images; the ops' cost does
not depend on content except Equalize's histogram) with one seeded draw:

- groups: distinct (slot, op, magnitude bin, sign) groups the draw has — the grouped path's torchvision calls;
- ops: torch operator calls that compute (views excluded; the host-side planning included), counted with a
  TorchDispatchMode around one call;
- ms: median wall time of `--reps` calls after one warm-up (device-synchronised on CUDA).

    python benchmarks/autoaugment_ops.py                        # CPU, batch 64, 224 px, 1 thread
    python benchmarks/autoaugment_ops.py --device cuda --reps 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from harness.data.augment import autoaugment_batch, autoaugment_policies, draw_autoaugment  # noqa: E402


def images(batch: int, size: int, seed: int) -> torch.Tensor:
    """uint8 [batch, 3, size, size]: gradients, blocks and noise, so that every op changes the images."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])[None] * torch.rand((batch, 3, 1, 1), generator=g)
    blocks = torch.nn.functional.interpolate((torch.rand((batch, 3, 4, 4), generator=g) > 0.5).float(), size=(size, size))
    noise = torch.rand((batch, 3, size, size), generator=g) * 0.2
    return ((0.5 * base + 0.3 * blocks + noise).clamp(0, 1) * 255).round().to(torch.uint8)


def count_ops(fn) -> int:
    """Torch operator calls (views excluded) made by `fn()`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 0 if func.is_view else 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def groups(draw, policy: str) -> int:
    """Distinct (slot, op, magnitude bin, sign) among the applied ops of `draw` (the grouped path's call count)."""
    subs = autoaugment_policies(policy)
    seen = set()
    for pid, probs, signs in zip(draw.policy_id.tolist(), draw.probs.tolist(), draw.signs.tolist()):
        for slot in range(2):
            op, p, mag = subs[pid][slot]
            if probs[slot] <= p:
                seen.add((slot, op, mag, signs[slot]))
    return len(seen)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = images(args.batch, args.size, args.seed).to(device)
    out: dict = {}
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{args.size} px, median of {args.reps}")
    print(f"{'policy':<9} {'interp':<9} {'groups':>6} {'path':<8} {'ops':>5} {'ms':>8}")
    for policy, interp in (("imagenet", "nearest"), ("cifar10", "bilinear")):
        draw = draw_autoaugment(args.batch, policy, torch.Generator().manual_seed(args.seed))
        n_groups = groups(draw, policy)
        for path in ("grouped", "batched"):
            fn = lambda: autoaugment_batch(x, draw, policy, interp, path=path)  # noqa: E731
            fn()
            sync()
            ops = count_ops(fn)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t0)
            ms = 1000 * statistics.median(times)
            out[policy, path] = {"groups": n_groups, "ops": ops, "ms": ms}
            print(f"{policy:<9} {interp:<9} {n_groups:>6} {path:<8} {ops:>5} {ms:>8.1f}")
    return out


if __name__ == "__main__":
    main()
