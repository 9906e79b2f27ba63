"""Image banks: uint8 images (in memory, or memory-mapped from a prepared cache) → normalised float batches on the
run's device.

Every transform takes a whole batch of uint8 tensors on the run's device (harness/data/augment.py; on CPU its crop
loops over the batch's samples, which measured faster there than the batched kernels). Training augmentation is seeded per batch from the run config (seed, task, epoch, batch number), so a run
resumed at any epoch draws the same augmentations as an uninterrupted one without storing generator state.
Small banks without augmentation (the embedded benchmarks) are preprocessed once and kept on the device; a training
set that fits can be kept on the device as uint8 (`resident_on_device`, `ExecConfig.data_placement`). Host indices
and labels reach the device by pinned, asynchronous copies: building a batch never waits for the device.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.devices import to_device_async
from harness.core.seeding import generator as seeded_generator
from harness.data.augment import TestTransform, TrainTransform, test_batch, train_batch
from harness.data.spec import ImageSpec

_PRECOMPUTE_BYTES = 512 * 2**20
EVAL_CACHE_CPU_BYTES = 256 * 2**20  # evaluation-view cache of a test bank on CPU: only small sets
EVAL_CACHE_CUDA_FRACTION = 8  # on CUDA: at most 1/8 of the free device memory when the bank is built


def eval_cache_fits(nbytes: int, device: torch.device) -> bool:
    """Whether a test bank may keep its evaluation view (`nbytes` of float32) on `device`: on CUDA when it takes at
    most 1/EVAL_CACHE_CUDA_FRACTION of the free memory (CIFAR-100's 10 000 test images at 224² are 6 GB, ImageNet-R's
    ≈ 6 000 are 3.6 GB), on CPU when it is at most EVAL_CACHE_CPU_BYTES (there the model's forward dwarfs the
    transform, so a larger cache would buy nothing measurable for its memory)."""
    if device.type == "cuda":
        return nbytes <= torch.cuda.mem_get_info(device)[0] // EVAL_CACHE_CUDA_FRACTION
    return nbytes <= EVAL_CACHE_CPU_BYTES


def resident_on_device(placement: str, images: torch.Tensor | np.ndarray, device: torch.device) -> bool:
    """Whether a bank keeps its whole uint8 image set on the device. `device`/`host` force it; `auto`: on CUDA when
    the set takes at most a quarter of the free device memory (ImageNet-R's ≈ 4.7 GB cache on an 80–141 GB GPU),
    never on CPU (the images already are in host memory or a memory map)."""
    if placement not in ("auto", "host", "device"):
        from harness.core.errors import ConfigError

        raise ConfigError(f"data placement: expected auto, host or device, got {placement!r}")
    if placement != "auto":
        return placement == "device"
    if device.type != "cuda":
        return False
    nbytes = images.numel() if isinstance(images, torch.Tensor) else images.nbytes
    return nbytes <= torch.cuda.mem_get_info(device)[0] // 4


class ImageBank:
    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: np.ndarray,
        image: ImageSpec,
        device: torch.device,
        test_transform: TestTransform | None = None,
        train_transform: TrainTransform | None = None,
        placement: str = "auto",
        cache_eval_view: bool = False,
    ):
        """`cache_eval_view` (test banks): keep each image's evaluation view once computed, when the whole view fits
        `eval_cache_fits`, so that the evaluation after every task does not recompute the test transform of the
        earlier tasks' images. The view of an image does not depend on the other images of its batch, so cached and
        recomputed batches are bit-identical (tests/test_run_e2e.py)."""
        if images.dtype not in (torch.uint8, np.uint8) or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.image = image
        self.device = device
        self.test_transform = test_transform
        self.train_transform = train_transform
        self._labels_host = torch.as_tensor(labels, dtype=torch.long)
        self.labels = self._labels_host.to(device)
        self.mean = torch.tensor(image.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(image.std, device=device).view(1, -1, 1, 1)
        self._raw = images
        # the whole uint8 set resident on the device (gathered there: no per-batch host gather or copy), when
        # `placement` says so (resident_on_device)
        self._resident = torch.as_tensor(np.asarray(images)).to(device) if resident_on_device(placement, images, device) else None
        out_bytes = images.shape[0] * image.channels * image.size * image.size * 4
        small = isinstance(images, torch.Tensor) and out_bytes <= _PRECOMPUTE_BYTES
        self._pre = self.preprocess(images) if small else None
        self._view: torch.Tensor | None = None  # evaluation views, filled lazily (rows where `_viewed`)
        self._viewed: np.ndarray | None = None  # host flags: looking them up never waits for the device
        if cache_eval_view and self._pre is None and eval_cache_fits(out_bytes, device):
            self._viewed = np.zeros(images.shape[0], dtype=bool)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images at `idx` on the device; memory maps are read in index order (sequential I/O)."""
        if self._resident is not None:
            return self._resident[self.to_device(idx)]
        if isinstance(self._raw, torch.Tensor):
            return to_device_async(self._raw[idx], self.device)  # pinned first: from pageable memory CUDA blocks
        ids = idx.numpy()
        order = np.argsort(ids, kind="stable")
        block = np.empty((len(ids),) + self._raw.shape[1:], dtype=np.uint8)
        block[order] = self._raw[ids[order]]
        return to_device_async(torch.from_numpy(block), self.device)

    def preprocess(self, u8: torch.Tensor) -> torch.Tensor:
        """The deterministic (evaluation) view: the test transform, or a plain resize to the model's input size."""
        u8 = to_device_async(u8, self.device)
        if self.test_transform is not None:
            return test_batch(u8, self.test_transform, self.image.mean, self.image.std)
        x = u8.float().div_(255.0)
        if x.shape[-1] != self.image.size or x.shape[-2] != self.image.size:
            x = F.interpolate(x, size=(self.image.size, self.image.size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device without blocking the host: pinned, then copied asynchronously (no-op on CPU)."""
        return to_device_async(t, self.device)

    def batch(self, idx: torch.Tensor, augment: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at host indices `idx`, on the device; nothing here waits for the device."""
        if augment is not None and self.train_transform is not None:
            x = train_batch(self._gather(idx), self.train_transform, augment, self.image.mean, self.image.std)
        elif self._pre is not None:
            x = self._pre[self.to_device(idx)]
        elif self._viewed is not None:
            x = self._cached_view(idx)
        else:
            x = self.preprocess(self._gather(idx))
        return x, self.to_device(self._labels_host[idx])

    def _cached_view(self, idx: torch.Tensor) -> torch.Tensor:
        """The evaluation view at host indices `idx`: the images not seen before are transformed (as one batch) and
        stored, the rest read from the cache. A batch none of whose images is cached is computed exactly as without
        the cache."""
        assert self._viewed is not None
        ids = idx.numpy()
        missing = ~self._viewed[ids]
        if not missing.any():
            return self._view[self.to_device(idx)]
        fresh_idx = torch.from_numpy(ids[missing])
        fresh = self.preprocess(self._gather(fresh_idx))
        if self._view is None:
            self._view = torch.empty((len(self._viewed),) + tuple(fresh.shape[1:]), dtype=fresh.dtype, device=self.device)
        self._view[self.to_device(fresh_idx)] = fresh
        self._viewed[ids[missing]] = True
        return fresh if missing.all() else self._view[self.to_device(idx)]

    def iterate(
        self,
        indices: np.ndarray,
        batch_size: int,
        generator: torch.Generator | None = None,
        augment: tuple | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches over `indices`; shuffled by `generator` when given (CPU generator: same order on any device).
        `augment` (seed parts, e.g. (seed, "augment", task, epoch)) turns on the training transform, batch i drawing
        from a generator seeded by (*augment, i); without it batches get the deterministic evaluation view."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if generator is not None:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        for n, i in enumerate(range(0, len(idx), batch_size)):
            g = seeded_generator(*augment, n) if augment is not None and self.train_transform is not None else None
            yield self.batch(idx[i : i + batch_size], g)
