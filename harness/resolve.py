"""One cell's fully resolved RunConfig, from a benchmark and a method name plus overrides.

Resolution order (later wins): TrainConfig defaults → the benchmark spec's `train:` and `backbone:` → its protocol
preset → grid overrides → command-line `--set key=value`. Unknown names and keys are refused with the valid ones.
"""

from __future__ import annotations

from typing import Any

from harness.config import TOP_LEVEL_KEYS, RunConfig, TrainConfig, check_seed, valid_override_keys
from harness.core.errors import ConfigError
from harness.core.schema import from_dict, to_dict
from harness.data.protocol import apply_protocol, load_protocol
from harness.data.spec import load_spec
from harness.method.registry import get_method
from harness.model.backbone import BackboneConfig


def resolve(
    benchmark: str,
    method: str,
    seed: int = 0,
    order_seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    where: str = "overrides",
) -> RunConfig:
    """The fully resolved RunConfig of one cell. Unknown benchmark/method/key → ConfigError naming the valid ones."""
    spec = load_spec(benchmark)
    method_cls = get_method(method)
    check_scenario(method_cls, spec.scenario, spec.name, where)
    protocol_name = (overrides or {}).get("protocol", spec.protocol)
    if protocol_name is not None and spec.source.kind != "images":
        raise ConfigError(f"{where}: protocol presets apply to image benchmarks; {spec.name!r} is {spec.source.kind}")
    train_dict = dict(spec.train)
    if protocol_name is not None:
        protocol = load_protocol(str(protocol_name))
        spec = apply_protocol(spec, protocol)
        train_dict.update(protocol.train_settings(spec.name))
    train = to_dict(from_dict(TrainConfig, train_dict, f"{spec.file}.train (+ protocol {protocol_name})"))
    backbone: dict[str, Any] = {"preset": spec.backbone}
    params = to_dict(method_cls.Params())
    top: dict[str, Any] = {"seed": seed, "order_seed": order_seed, "protocol": protocol_name, "tune": False}
    valid = valid_override_keys(method_cls.Params)
    for key, value in (overrides or {}).items():
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        if key in TOP_LEVEL_KEYS:
            top[key] = value
            continue
        section, name = key.split(".", 1)
        {"train": train, "backbone": backbone, "method": params}[section][name] = value
    for key in ("seed", "order_seed"):
        check_seed(top[key], f"{where}: {key}", optional=key == "order_seed")
    params_obj = from_dict(method_cls.Params, params, f"{where} (method {method!r})")
    if spec.class_order == "natural" or isinstance(spec.class_order, list):
        top["order_seed"] = None  # the seed has no effect: do not let it split identical runs
    elif top["order_seed"] is None:
        top["order_seed"] = spec.order_seed
    data = {
        "benchmark": spec.name,
        "method": method_cls.name,
        "backbone": to_dict(from_dict(BackboneConfig, backbone, f"{where} (backbone)").resolved()),
        "train": train,
        "method_params": to_dict(params_obj),
        **top,
        "scenario": spec.scenario,
    }
    return RunConfig.from_dict(data, where)


def check_scenario(method_cls, scenario: str, benchmark: str, where: str) -> None:
    """A method runs only in the scenarios it declares (`Method.scenarios`); else a ConfigError saying why."""
    if scenario not in method_cls.scenarios:
        why = f" ({method_cls.scenario_note})" if method_cls.scenario_note else ""
        raise ConfigError(f"{where}: method {method_cls.name!r} cannot run on {benchmark!r}, a {scenario} benchmark: it "
                          f"runs in {', '.join(method_cls.scenarios)} only{why}. Remove it from the grid's methods, or "
                          f"pick a {'/'.join(method_cls.scenarios)} benchmark")
