"""Tiny generated images in the real layouts of the benchmarks' sources (folders and Hub-format datasets)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def pixels(seed: int, h: int = 12, w: int = 10) -> np.ndarray:
    """A deterministic RGB image with structure (a gradient plus noise), uint8 [h, w, 3]."""
    rng = np.random.RandomState(seed)
    ramp = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
    return np.clip(ramp + rng.randint(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)


def save(path: Path, seed: int, fmt: str = "PNG", size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(seed, *size)).save(path, format=fmt)
    return path


def png_bytes(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels(seed, *size)).save(buf, format="PNG")
    return buf.getvalue()


def wnids(n: int) -> list[str]:
    return [f"n{1440000 + 7 * i:08d}" for i in range(n)]


def class_folders(root: Path, classes: list[str], per_class: int, ext: str = "png") -> Path:
    """`root/<class>/<rendition>_<k>.<ext>` (ImageNet-R/A archive layout)."""
    for c, name in enumerate(classes):
        for k in range(per_class):
            save(root / name / f"art_{k}.{ext}", seed=c * 100 + k, fmt="PNG" if ext == "png" else "JPEG")
    return root


def cub_archive(root: Path, n_classes: int = 200, per_class: int = 3) -> Path:
    """CUB_200_2011 layout: images/<NNN.Name>/<file>.jpg, images.txt, train_test_split.txt (last image of a class: test)."""
    lines, split, img_id = [], [], 1
    for c in range(n_classes):
        cls = f"{c + 1:03d}.Bird_{c}"
        for k in range(per_class):
            rel = f"{cls}/Bird_{c}_{k:04d}.jpg"
            save(root / "images" / rel, seed=c * 10 + k, fmt="JPEG")
            lines.append(f"{img_id} {rel}")
            split.append(f"{img_id} {0 if k == per_class - 1 else 1}")
            img_id += 1
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return root


def domainnet_archive(root: Path, domains: list[str], classes: list[str]) -> Path:
    """DomainNet layout: <domain>/<class>/<domain>_<c>_<k>.jpg and <domain>_{train,test}.txt (`path label`)."""
    for d_i, d in enumerate(domains):
        for split, k in (("train", 0), ("test", 1)):
            rows = []
            for c, cls in enumerate(classes):
                rel = f"{d}/{cls}/{d}_{c:03d}_{k}.jpg"
                save(root / rel, seed=d_i * 10000 + c * 10 + k, fmt="JPEG")
                rows.append(f"{rel} {c}")
            (root / f"{d}_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def datasets_copy(tmp: Path, monkeypatch, edits: dict[str, dict] | None = None) -> Path:
    """A private copy of datasets/ (CLMERGE_DATASETS) with some specs edited — e.g. a tiny protocol."""
    src = Path(__file__).resolve().parents[1] / "datasets"
    dst = tmp / "datasets"
    shutil.copytree(src, dst)
    for rel, change in (edits or {}).items():
        path = dst / rel
        data = yaml.safe_load(path.read_text()) if path.exists() else {}
        data.update(change)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("CLMERGE_DATASETS", str(dst))
    return dst


# A protocol for tests: the real transforms' machinery at 16 px (AutoAugment, RandomResizedCrop, flip, centre crop).
TINY_PROTOCOL = {
    "name": "tiny",
    "description": "test protocol: AutoAugment + RRC + flip at 16 px",
    "source": "tests",
    "class_order": "pcg64-shuffle",
    "order_seed": 0,
    "styles": {
        "cifar": {"train": {"autoaugment": "cifar10", "size": 16, "flip": True}, "test": {"resize": 16},
                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "imagenet": {"train": {"autoaugment": "imagenet", "size": 16, "scale": [0.05, 1.0], "flip": True},
                     "test": {"resize": 18, "center_crop": 16}, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    },
    "train": {"epochs": 2, "batch_size": 16},
}
