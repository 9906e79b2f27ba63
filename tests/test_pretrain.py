"""The embedded backbone's pre-training is computed once and then read from the cache."""

import torch

from harness.model import pretrain
from harness.model.backbone import PRESETS


def test_pretrained_backbone_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMERGE_CACHE", str(tmp_path))
    monkeypatch.setitem(pretrain.RECIPES, "tiny", pretrain.PretrainRecipe(epochs=1, batch_size=100))
    preset = PRESETS["vit-micro-test"]
    first = pretrain.load_or_pretrain("tiny", preset)
    files = list((tmp_path / "backbones").glob("*.safetensors"))
    assert len(files) == 1 and "head.weight" not in first  # classifier dropped

    def no_training(*a, **k):
        raise AssertionError("pre-trained again instead of reading the cache")

    monkeypatch.setattr(pretrain, "pretrain", no_training)
    second = pretrain.load_or_pretrain("tiny", preset)
    assert all(torch.equal(first[k], second[k]) for k in first)
    # a different recipe is a different file
    monkeypatch.setitem(pretrain.RECIPES, "tiny", pretrain.PretrainRecipe(epochs=2, batch_size=100))
    assert pretrain.recipe_key("tiny", preset) not in files[0].name
