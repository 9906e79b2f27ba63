"""In-memory image banks: uint8 images → normalised float batches on the run's device.

Preprocessing (resize + normalise) runs on whole batches of tensors, never per sample in Python. Small banks are
preprocessed once and kept on the device.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from harness.spec import ImageSpec

_PRECOMPUTE_BYTES = 512 * 2**20


class ImageBank:
    def __init__(self, images: torch.Tensor, labels: np.ndarray, image: ImageSpec, device: torch.device):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.image = image
        self.device = device
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        self.mean = torch.tensor(image.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(image.std, device=device).view(1, -1, 1, 1)
        out_bytes = images.shape[0] * image.channels * image.size * image.size * 4
        self._raw = images
        self._pre = self.preprocess(images) if out_bytes <= _PRECOMPUTE_BYTES else None

    def preprocess(self, u8: torch.Tensor) -> torch.Tensor:
        x = u8.to(self.device, non_blocking=True).float().div_(255.0)
        if x.shape[-1] != self.image.size or x.shape[-2] != self.image.size:
            x = F.interpolate(x, size=(self.image.size, self.image.size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx_dev = idx.to(self.device)
        x = self._pre[idx_dev] if self._pre is not None else self.preprocess(self._raw[idx])
        return x, self.labels[idx_dev]

    def iterate(
        self, indices: np.ndarray, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches over `indices`; shuffled by `generator` when given (CPU generator: same order on any device)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if generator is not None:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        for i in range(0, len(idx), batch_size):
            yield self.batch(idx[i : i + batch_size])
