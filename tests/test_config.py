import pytest

from harness.config import parse_set
from harness.core.errors import ConfigError
from harness.resolve import resolve


def test_resolution_order_and_hash():
    a = resolve("split-digits", "seq-lora", seed=0)
    assert a.train.epochs == 10 and a.backbone.preset == "vit-tiny-digits-mnist" and a.backbone.lora_rank == 4
    b = resolve("split-digits", "seq-lora", seed=0, overrides={"train.epochs": 3})
    assert b.train.epochs == 3 and a.run_id() != b.run_id()
    assert resolve("split-digits", "seq-lora", seed=0).run_id() == a.run_id()
    assert resolve("split-digits", "seq-lora", seed=1).run_id() != a.run_id()


def test_order_seed_ignored_for_natural_order():
    assert resolve("split-digits", "seq-lora", order_seed=5).order_seed is None


def test_parse_set_values_as_yaml():
    assert parse_set(["train.epochs=3", "backbone.lora_targets=[k, v]", "train.lr_lora=1e-3"]) == {
        "train.epochs": 3,
        "backbone.lora_targets": ["k", "v"],
        "train.lr_lora": 1e-3,
    }
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set(["epochs"])


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"train.epoch": 1}, r"unknown key 'train.epoch'; valid keys: .*train.epochs"),
        ({"train.epochs": "many"}, r"train.epochs: expected an integer"),
        ({"train.schedule": "linear"}, r"invalid value 'linear'; valid: constant, cosine, multistep"),
        ({"backbone.preset": "resnet"}, r"unknown backbone preset 'resnet'.*vit-b16-in21k"),
        ({"backbone.lora_targets": ["o"]}, r"unknown LoRA target 'o'"),
        ({"method.lr": 1}, r"unknown key 'method.lr'"),
    ],
)
def test_bad_overrides(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve("split-digits", "seq-lora", overrides=overrides)


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown method 'pmm'; valid: .*seq-lora"):
        resolve("split-digits", "pmm")
