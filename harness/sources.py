"""Load a benchmark's images into memory as uint8 tensors, with its train/test split.

Each source kind returns the same `SourceData`; everything downstream (task stream, trainer) is source-agnostic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import ConfigError
from harness.spec import BenchmarkSpec


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


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: per class, a `test_fraction` share (rounded) goes to test. Sorted ids out."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        ids = np.flatnonzero(labels == c)
        ids = ids[rng.permutation(len(ids))]
        n_test = int(round(test_fraction * len(ids)))
        test.append(ids[:n_test])
        train.append(ids[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _load_sklearn_digits(spec: BenchmarkSpec) -> SourceData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8×8 pixel intensities 0..16 → uint8 0..255, one channel.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    held = spec.held_out
    if held is None:
        raise ConfigError(f"{spec.file}: source sklearn-digits has no official split; add held_out: {{test_fraction, seed}}")
    tr, te = stratified_split(labels, held.test_fraction, held.seed)
    return SourceData(
        train_images=torch.from_numpy(images[tr]),
        train_labels=labels[tr],
        test_images=torch.from_numpy(images[te]),
        test_labels=labels[te],
        class_names=[str(i) for i in range(10)],
        split_hash=split_hash(tr, te),
    )


_LOADERS = {"sklearn-digits": _load_sklearn_digits}


def _load_prepared(spec: BenchmarkSpec) -> SourceData:
    from harness.cache import open_prepared

    return open_prepared(spec)


_LOADERS["images"] = _load_prepared


def load_source(spec: BenchmarkSpec) -> SourceData:
    data = _LOADERS[spec.source.kind](spec)
    n = len(data.class_names)
    if n != spec.num_classes:
        raise ConfigError(f"{spec.file}: num_classes is {spec.num_classes} but the source has {n} classes")
    return data
