"""Pre-flight: before anything is submitted, check every cell's inputs and say, in one message, what is missing and
the exact commands that fix it.

Checked per cell (cheap: no image is decoded, no model built):
- the benchmark's cache is prepared (image benchmarks; `clmerge prepare`), and a class subset the benchmark needs
  (DN*: 200 of DomainNet's 345 classes) is given or was used to prepare it;
- the backbone weights are available: a `backbone.weights` file that exists, clmerge's shipped file (the embedded
  digits ViT) with its pinned SHA-256, or a Hub backbone already in the Hugging Face cache (runs on compute nodes are
  assumed offline; whether HF_HUB_OFFLINE is set is stated);
- the protocol resolves (already guaranteed: a cell is a resolved RunConfig, harness/config.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from harness.config import RunConfig

DOMAINNET_CLASSES = 345


@dataclass
class Problem:
    """One missing input, the cells it blocks and the command that fixes it."""

    kind: str  # "benchmark not prepared" | "class list missing" | "backbone weights missing"
    subject: str  # the benchmark or backbone it is about
    detail: str
    fix: str  # the command (or commands) to run
    cells: list[str] = field(default_factory=list)  # run ids it blocks


@dataclass
class Readiness:
    ready: list[RunConfig]
    unready: list[RunConfig]
    problems: list[Problem]
    prepared: dict[str, str]  # benchmark → state for the plan ("prepared: <split rule>", "not prepared", "embedded")

    @property
    def ok(self) -> bool:
        return not self.problems


def _prepare_fix(spec) -> str:
    """The exact `clmerge prepare` command for a benchmark (Hub default where the spec has one), with the `--results`
    in force so the data lands where the runs look."""
    from harness.data.cache import clmerge_command

    cmd = f"{clmerge_command()} prepare {spec.name}"
    if spec.source.hub is None:
        cmd += " --source DIR"
    if needs_class_list(spec) and spec.source.classes_file is None:
        cmd += (f" --classes CLASSES.txt   # the {spec.num_classes} class names, one per line (or --split-file the "
                "lists). This list is not public: it comes from the paper's code base (docs/benchmarks.md, "
                f"{spec.name}); without it the {spec.name} rows cannot run")
    elif spec.source.hub is not None:
        cmd += f"   # from the Hub dataset {spec.source.hub.id}; or --source DIR for a local copy"
    return cmd


def needs_class_list(spec) -> bool:
    """A DomainNet subset (fewer than its 345 classes) needs the subset's class names to be prepared."""
    return spec.source.domains is not None and spec.num_classes < DOMAINNET_CLASSES


def _split_rule(spec) -> str:
    """How the prepared cache was split (its manifest's `split_rule`, shortened), so the plan shows which split the
    runs will use (e.g. the official CUB split, not the PILOT folder a paper used)."""
    import json

    from harness.data.cache import prepared_dir

    try:
        rule = json.loads((prepared_dir(spec) / "manifest.json").read_text()).get("split_rule", "?")
    except (OSError, ValueError):
        return "manifest unreadable"
    return str(rule).split(" (")[0]


def _benchmark_problem(cfg: RunConfig) -> tuple[str, Problem | None]:
    from harness.core.paths import datasets_dir
    from harness.data.cache import cache_name, is_prepared
    from harness.data.protocol import run_spec

    spec = run_spec(cfg)
    if spec.source.kind != "images":
        return "embedded", None
    if is_prepared(spec):
        return f"prepared: {_split_rule(spec)}", None
    if spec.source.classes_file is not None:
        f = spec.source.classes_file
        path = f if os.path.isabs(f) else str(datasets_dir() / f)
        if not os.path.exists(path):
            return "not prepared", Problem("class list missing", spec.name, f"the class list {f} does not exist",
                                           f"write {path} (one class name per line), then {_prepare_fix(spec)}")
    shared = f"; shared by every benchmark with source.cache: {spec.source.cache}" if spec.source.cache else ""
    return "not prepared", Problem("benchmark not prepared", cache_name(spec),
                                   f"no prepared cache yet (decoded once, then read by every run{shared})",
                                   _prepare_fix(spec))


def _hub_cached(timm_name: str) -> bool:
    """Whether timm's Hugging Face weights for `timm_name` are in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(timm_name)
    repo = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    if not repo:
        return False
    repo = repo.split("/", 2)
    repo_id = "/".join(repo[:2])
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo_id, filename)
        if isinstance(hit, str) and os.path.exists(hit):
            return True
    return False


def _backbone_problem(cfg: RunConfig) -> Problem | None:
    from harness.model.backbone import PRESETS

    preset = PRESETS[cfg.backbone.preset]
    if cfg.backbone.weights:
        if os.path.exists(cfg.backbone.weights):
            return None
        return Problem("backbone weights missing", cfg.backbone.preset, f"backbone.weights={cfg.backbone.weights} does not exist",
                       "pass an existing file: --set backbone.weights=/path/to/model.safetensors")
    if preset.weights_file:  # clmerge's own backbone: the shipped file must be there with its pinned hash
        from harness.core.errors import ConfigError
        from harness.model.shipped_weights import check_shipped

        try:
            check_shipped(preset)
        except ConfigError as exc:
            return Problem("backbone weights missing", cfg.backbone.preset, str(exc),
                           f"git checkout -- harness/model/weights/{preset.weights_file}   # or --set backbone.weights=FILE")
        return None
    if not preset.pretrained or _hub_cached(preset.timm_name):
        return None
    offline = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else "HF_HUB_OFFLINE is not set"
    return Problem(
        "backbone weights missing", cfg.backbone.preset,
        f"timm {preset.timm_name} is not in the Hugging Face cache ({offline}; compute nodes are assumed offline)",
        f"python -c \"import timm; timm.create_model('{preset.timm_name}', pretrained=True)\"   # once, online; "
        "or --set backbone.weights=FILE")


def check(cells: list[RunConfig]) -> Readiness:
    """Every cell's inputs; problems merged by (kind, subject), each listing the cells it blocks."""
    by_key: dict[tuple[str, str], Problem] = {}
    prepared: dict[str, str] = {}
    bench_cache: dict[tuple[str, str | None], tuple[str, Problem | None]] = {}
    backbone_cache: dict[tuple[str, str | None], Problem | None] = {}
    ready, unready = [], []
    for c in cells:
        key = (c.benchmark, c.protocol)
        if key not in bench_cache:
            bench_cache[key] = _benchmark_problem(c)
        state, bp = bench_cache[key]
        prepared[c.benchmark] = state
        bkey = (c.backbone.preset, c.backbone.weights)
        if bkey not in backbone_cache:
            backbone_cache[bkey] = _backbone_problem(c)
        found = [p for p in (bp, backbone_cache[bkey]) if p is not None]
        for p in found:
            merged = by_key.setdefault((p.kind, p.subject), Problem(p.kind, p.subject, p.detail, p.fix))
            merged.cells.append(c.run_id())
        (unready if found else ready).append(c)
    kinds = ("benchmark not prepared", "class list missing", "backbone weights missing")
    problems = sorted(by_key.values(), key=lambda p: kinds.index(p.kind) if p.kind in kinds else len(kinds))
    return Readiness(ready, unready, problems, prepared)


def message(readiness: Readiness, what: str, skip_hint: bool = True) -> str:
    """The one message: what is missing, how many cells it blocks, and the commands to run."""
    r = readiness
    total = len(r.ready) + len(r.unready)
    lines = [f"{what}: {len(r.unready)} of {total} cells cannot run yet; nothing was submitted.", ""]
    for p in r.problems:
        lines.append(f"- {p.kind}: {p.subject} ({len(p.cells)} cells) — {p.detail}")
    lines += ["", "To fix, run:", ""]
    seen = set()
    for p in r.problems:
        if p.fix not in seen:
            seen.add(p.fix)
            lines.append(f"    {p.fix}")
    if skip_hint and r.ready:
        lines += ["", f"Or run the {len(r.ready)} ready cells only with --skip-unready."]
    return "\n".join(lines)
