"""Load a benchmark's images into memory as uint8 tensors, with its train/test split.

Each source kind returns the same `SourceData`; everything downstream (task stream, trainer) is source-agnostic.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.core.errors import ConfigError
from harness.data.cache import open_prepared
from harness.data.source_data import SourceData, split_hash
from harness.data.spec import BenchmarkSpec
from harness.data.splits import stratified_split


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


_LOADERS["images"] = open_prepared  # a prepared cache (harness/data/prepare.py)


def load_source(spec: BenchmarkSpec) -> SourceData:
    data = _LOADERS[spec.source.kind](spec)
    n = len(data.class_names)
    if n != spec.num_classes:
        raise ConfigError(f"{spec.file}: num_classes is {spec.num_classes} but the source has {n} classes")
    return data
