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


def rotated_digits(images: np.ndarray, angle: int, size: int) -> torch.Tensor:
    """uint8 [N, 1, 8, 8] digits → uint8 [N, 1, size, size]: upsampled (bilinear, as the model input is made) and
    rotated by `angle` degrees counter-clockwise about the centre (bilinear, background 0). Deterministic: no RNG."""
    import torch.nn.functional as F
    from torchvision.transforms.functional import InterpolationMode, rotate

    x = torch.from_numpy(images).float().div_(255.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if angle % 360:
        x = rotate(x, float(angle), interpolation=InterpolationMode.BILINEAR, fill=0.0)
    return x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


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
    if spec.source.rotations is None:
        return SourceData(
            train_images=torch.from_numpy(images[tr]),
            train_labels=labels[tr],
            test_images=torch.from_numpy(images[te]),
            test_labels=labels[te],
            class_names=[str(i) for i in range(10)],
            split_hash=split_hash(tr, te),
        )
    # one domain per angle, each holding every image of the split (the same writers' digits, rotated): a test image
    # is never a rotation of a training image. Samples are domain-major; domain ids index the sorted names.
    angles = spec.source.rotations
    size = spec.image.size
    names = sorted(f"rot{a}" for a in angles)
    parts = {role: [rotated_digits(images[idx], a, size) for a in angles] for role, idx in (("train", tr), ("test", te))}
    dom = {role: np.repeat([names.index(f"rot{a}") for a in angles], len(idx)) for role, idx in (("train", tr), ("test", te))}
    return SourceData(
        train_images=torch.cat(parts["train"]),
        train_labels=np.tile(labels[tr], len(angles)),
        test_images=torch.cat(parts["test"]),
        test_labels=np.tile(labels[te], len(angles)),
        class_names=[str(i) for i in range(10)],
        split_hash=split_hash(tr, te),
        domain_names=names,
        train_domains=dom["train"],
        test_domains=dom["test"],
    )


_LOADERS = {"sklearn-digits": _load_sklearn_digits}


_LOADERS["images"] = open_prepared  # a prepared cache (harness/data/prepare.py)


def load_source(spec: BenchmarkSpec) -> SourceData:
    data = _LOADERS[spec.source.kind](spec)
    n = len(data.class_names)
    if n != spec.num_classes:
        raise ConfigError(f"{spec.file}: num_classes is {spec.num_classes} but the source has {n} classes")
    return data
