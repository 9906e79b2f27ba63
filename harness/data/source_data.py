"""The one in-memory format of a benchmark's images and split, whatever the source (embedded or a prepared cache):
everything downstream (task stream, trainer) is source-agnostic."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from harness.core.errors import ConfigError


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
    # the domain of each sample (domain-il): names, and per split an index into them; None when the source has none
    domain_names: list[str] | None = None
    train_domains: np.ndarray | None = None
    test_domains: np.ndarray | None = None


def domain_ids(names_per_sample: list[str | None], where: str) -> tuple[list[str], np.ndarray]:
    """Per-sample domain names → (sorted distinct names, index of each sample's name). A sample without a domain is
    an error: a domain-il task is the set of samples of one domain."""
    if any(n is None for n in names_per_sample):
        raise ConfigError(f"{where}: {sum(n is None for n in names_per_sample)} samples have no domain (their file names or the source lists give none)")
    names = sorted(set(names_per_sample))
    index = {n: i for i, n in enumerate(names)}
    return names, np.array([index[n] for n in names_per_sample], dtype=np.int64)


def split_hash(train_ids: np.ndarray, test_ids: np.ndarray) -> str:
    """SHA-256 of the train and test sample ids: two runs on the same split share this hash."""
    h = hashlib.sha256()
    h.update(b"train:" + np.asarray(train_ids, dtype=np.int64).tobytes())
    h.update(b"test:" + np.asarray(test_ids, dtype=np.int64).tobytes())
    return h.hexdigest()
