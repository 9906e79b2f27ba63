"""The embedded backbone's weights are shipped with a pinned SHA-256, loaded by default and refused when altered."""

import shutil

import pytest
import torch

from harness.core.errors import ConfigError
from harness.model import shipped_weights
from harness.model.backbone import PRESETS, create_vit

PRESET = PRESETS["vit-tiny-digits-mnist"]


def test_shipped_file_has_the_pinned_hash_and_is_what_the_backbone_loads():
    path = shipped_weights.check_shipped(PRESET)
    assert shipped_weights.sha256_file(path) == PRESET.weights_sha256
    state = shipped_weights.load_weights_file(path)
    vit = create_vit(PRESET, None)
    own = vit.state_dict()
    # the split q|k|v Linears are copies of the fused qkv rows: compare the untouched tensors
    for key in ("patch_embed.proj.weight", "blocks.0.norm1.weight", "blocks.3.mlp.fc2.weight", "norm.bias"):
        assert torch.equal(own[key], state[key]), key
    q, k, v = state["blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(own["blocks.1.attn.qkv.k.weight"], k)


@pytest.fixture
def copied_weights(tmp_path, monkeypatch):
    src = shipped_weights.shipped_path(PRESET)
    shutil.copy(src, tmp_path / src.name)
    monkeypatch.setattr(shipped_weights, "WEIGHTS_DIR", tmp_path)
    return tmp_path / src.name


def test_altered_file_is_refused_with_the_hashes(copied_weights):
    data = bytearray(copied_weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last tensor
    copied_weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"SHA-256 .* pins {PRESET.weights_sha256}.*backbone.weights=FILE"):
        create_vit(PRESET, None)


def test_missing_file_is_refused(copied_weights):
    copied_weights.unlink()
    with pytest.raises(ConfigError, match="shipped weights .* are missing"):
        create_vit(PRESET, None)


def test_explicit_weights_file_replaces_the_shipped_one(tmp_path):
    state = shipped_weights.load_shipped(PRESET)
    state["norm.bias"] = state["norm.bias"] + 1.0
    path = tmp_path / "mine.safetensors"
    sha = shipped_weights.save_weights(state, path)
    assert sha == shipped_weights.sha256_file(path) != PRESET.weights_sha256
    vit = create_vit(PRESET, str(path))
    assert torch.equal(vit.state_dict()["norm.bias"], state["norm.bias"])
    with pytest.raises(ConfigError, match="does not exist"):
        create_vit(PRESET, str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    shipped_weights.save_weights({"x": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="do not fit the architecture"):
        create_vit(PRESET, str(bad))


def test_saving_is_deterministic(tmp_path):
    state = shipped_weights.load_shipped(PRESET)
    assert shipped_weights.save_weights(state, tmp_path / "a.safetensors") == PRESET.weights_sha256


def test_preflight_refuses_an_altered_file_before_anything_runs(copied_weights):
    from harness.dispatch import preflight
    from harness.resolve import resolve

    cfg = resolve("split-digits", "seq-lora", 0)
    assert preflight.check([cfg]).ok
    data = bytearray(copied_weights.read_bytes())
    data[-1] ^= 1
    copied_weights.write_bytes(bytes(data))
    readiness = preflight.check([cfg])
    assert not readiness.ok and readiness.unready == [cfg]
    (problem,) = readiness.problems
    assert problem.kind == "backbone weights missing" and f"pins {PRESET.weights_sha256}" in problem.detail
    assert f"git checkout -- harness/model/weights/{PRESET.weights_file}" in preflight.message(readiness, "smoke")
