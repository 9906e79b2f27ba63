"""The one in-memory format of a benchmark's images and split, whatever the source (embedded or a prepared cache):
everything downstream (task stream, trainer) is source-agnostic."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SourceData:
    """Images as uint8 [N, C, H, W] (a tensor, or a read-only memory map of a prepared cache); labels are the
    source's class ids 0..num_classes-1."""

    train_images: torch.Tensor | np.ndarray
    train_labels: np.ndarray
    test_images: torch.Tensor | np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    split_hash: str


def split_hash(train_ids: np.ndarray, test_ids: np.ndarray) -> str:
    """SHA-256 of the train and test sample ids: two runs on the same split share this hash."""
    h = hashlib.sha256()
    h.update(b"train:" + np.asarray(train_ids, dtype=np.int64).tobytes())
    h.update(b"test:" + np.asarray(test_ids, dtype=np.int64).tobytes())
    return h.hexdigest()
