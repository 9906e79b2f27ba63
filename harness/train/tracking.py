"""Optional experiment tracking (`--log tensorboard`, `--log wandb`): one tracked run per cell, named
`<benchmark>/<method>/seed<seed>/<run_id>`, with

* per optimiser step (x axis: the run's step count, continued across a resume): the loss and each parameter
  group's learning rate by the group's name (`train/loss`, `train/lr/lora`, `train/lr/head`),
* per task: the gradient norms of its first steps (`grad_norm/all`, `grad_norm/backbone`), the accuracy row on
  every seen task (`acc/task_<j>`, validation rows as `val_acc/task_<j>` when tune=true), A_t, and the method's
  record (merge coefficients α_t and any other number it stores, `method/<key>`),
* at the end: the summary metrics (`final/a_last`, …; tune=true: the validation ones as `final/val_a_last`, …) and
  the final accuracy matrices (as text).

wandb: one run per cell in `<results>/tracking/<benchmark>/<method>/seed<seed>/<run_id>/wandb/` (the TensorBoard
events' folder), each series plotted against its own step (`define_metric`: `train/*` against `train/step`, the
per-task series against `acc/step` = the task index …), one wandb log call per optimiser step or task.

Off by default and never required: the backends are imported only when asked for. Tracking reads values and never
draws random numbers or changes the model, so a run's result.json is the same with and without it (tested). wandb's
own offline switch (`WANDB_MODE=offline`) is respected; without credentials wandb is started offline.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from harness.core.errors import ConfigError

BACKENDS = ("tensorboard", "wandb")


class Tracker:
    """The no-op tracker and the interface: backends implement `scalar`, `text` and `close`."""

    active = False

    def scalar(self, name: str, value: float, step: int) -> None:
        pass

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Several scalars of one series family at one step (a backend may write them at once)."""
        for name, value in values.items():
            self.scalar(name, value, step)

    def text(self, name: str, value: str) -> None:
        pass

    def close(self) -> None:
        pass

    # The hooks the trainer and run call; all cheap no-ops when inactive.

    def step(self, task: int, loss, opt, step: int) -> None:
        """Optimiser step `step` of the run (1-based, continued across resumes): loss (a tensor: read only when
        tracking, as it synchronises), each group's learning rate by its name, the task."""
        if not self.active:
            return
        values = {"train/loss": float(loss.detach())}
        for i, group in enumerate(opt.param_groups):
            values[f"train/lr/{group.get('name', f'group{i}')}"] = float(group["lr"])
        values["train/task"] = float(task)
        self.log_scalars(values, step)

    def task_end(self, task: int, acc_row: list[float], curve_value: float, record: dict, grad_norms: dict,
                 val_row: list[float] | None = None) -> None:
        if not self.active:
            return
        for key, values in grad_norms.items():
            for i, v in enumerate(values):
                self.log_scalars({f"grad_norm/{key}/task_{task}": v}, i)
        self.log_scalars({**{f"acc/task_{j}": a for j, a in enumerate(acc_row)}, "acc/A_t": curve_value}, task)
        if val_row is not None:
            self.log_scalars({f"val_acc/task_{j}": a for j, a in enumerate(val_row)}, task)
        numbers = {f"method/{key}": value for key, value in _numbers(record)}
        if numbers:
            self.log_scalars(numbers, task)

    def finish(self, result: dict) -> None:
        if not self.active:
            return
        final = {f"final/{k}": float(v) for k, v in result["metrics"].items() if isinstance(v, (int, float))}
        val = result.get("validation", {}).get("metrics", {})
        final.update({f"final/val_{k}": float(v) for k, v in val.items() if isinstance(v, (int, float))})
        self.log_scalars(final, 0)
        for key in ("acc_matrix", "task_aware_matrix", "validation"):
            if key in result:
                self.text(f"final/{key}", json.dumps(result[key]))


NULL_TRACKER = Tracker()


def _numbers(record: dict, prefix: str = "") -> list[tuple[str, float]]:
    """Flatten a method record to (key, number) pairs: scalars as they are, lists element-wise (`alpha/0`)."""
    out = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out.append((name, float(value)))
        elif isinstance(value, (int, float)):
            out.append((name, float(value)))
        elif isinstance(value, dict):
            out += _numbers(value, f"{name}/")
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            out += [(f"{name}/{i}", float(v)) for i, v in enumerate(value)]
    return out


class TensorBoardTracker(Tracker):
    active = True

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(f"--log tensorboard: cannot import torch.utils.tensorboard ({exc}); "
                              "pip install 'clmerge[track]' (or pip install tensorboard)") from exc
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalar(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, step)

    def text(self, name: str, value: str) -> None:
        self.writer.add_text(name, value)

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    active = True

    def __init__(self, name: str, folder: Path, config: dict):
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError(f"--log wandb: cannot import wandb ({exc}); pip install wandb") from exc
        mode = os.environ.get("WANDB_MODE") or (None if os.environ.get("WANDB_API_KEY") else "offline")
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "clmerge"), name=name, config=config,
                              dir=str(folder), mode=mode, reinit=_reinit(wandb))
        for section in SECTIONS:  # each family of series against its own x axis, not wandb's call counter
            self.run.define_metric(f"{section}/step", hidden=True)
            self.run.define_metric(f"{section}/*", step_metric=f"{section}/step")

    def scalar(self, name: str, value: float, step: int) -> None:
        self.log_scalars({name: value}, step)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        # one log call per family and step; the family's step key is its x axis (define_metric above)
        by_section: dict[str, dict[str, float]] = {}
        for name, value in values.items():
            by_section.setdefault(name.split("/", 1)[0], {})[name] = value
        for section, group in by_section.items():
            self.run.log({**group, f"{section}/step": step})

    def text(self, name: str, value: str) -> None:
        self.run.summary[name] = value

    def close(self) -> None:
        if self.run is not None:  # closing twice (finish, then the run's `finally`) is harmless
            self.run.finish()
            self.run = None


SECTIONS = ("train", "grad_norm", "acc", "val_acc", "method", "final")  # first component of every series name


def _reinit(wandb) -> object:
    """`reinit` for one process running several cells: "finish_previous" where wandb knows it (0.19.10+; the bool
    form is deprecated there), True before."""
    try:
        major, minor, patch = (int(x) for x in re.findall(r"\d+", wandb.__version__)[:3])
    except (AttributeError, ValueError):
        return "finish_previous"
    return "finish_previous" if (major, minor, patch) >= (0, 19, 10) else True


def run_name(cfg) -> str:
    return f"{cfg.benchmark}/{cfg.method}/seed{cfg.seed}/{cfg.run_id()}"


def open_tracker(kind: str | None, cfg, root: Path) -> Tracker:
    """The tracker for one cell: NULL_TRACKER when `kind` is None; logs under <results>/tracking/."""
    if not kind:
        return NULL_TRACKER
    if kind not in BACKENDS:
        from harness.core.errors import unknown

        raise unknown("--log backend", kind, BACKENDS)
    folder = Path(root) / "tracking" / run_name(cfg)  # both backends: the documented place (docs/running.md)
    if kind == "tensorboard":
        return TensorBoardTracker(folder)
    return WandbTracker(run_name(cfg), folder, cfg.to_dict())


def check_backend(kind: str | None) -> None:
    """Refuse an unavailable backend before anything runs (not at the first cell)."""
    if not kind:
        return
    if kind not in BACKENDS:
        from harness.core.errors import unknown

        raise unknown("--log backend", kind, BACKENDS)
    module = {"tensorboard": "tensorboard", "wandb": "wandb"}[kind]
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"--log {kind}: the {module} package is not installed (pip install {module}); "
                          "tracking is optional, leave --log out to run without it")

