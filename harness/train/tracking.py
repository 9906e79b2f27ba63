"""Optional experiment tracking (`--log tensorboard`, `--log wandb`): one tracked run per cell, named
`<benchmark>/<method>/seed<seed>/<run_id>`, with

* per training step: the loss and each parameter group's learning rate (`train/loss`, `train/lr/<group>`),
* per task: the gradient norms of its first steps (`grad_norm/all`, `grad_norm/backbone`), the accuracy row on
  every seen task (`acc/task_<j>`, validation rows as `val_acc/task_<j>` when tune=true), A_t, and the method's
  record (merge coefficients α_t and any other number it stores, `method/<key>`),
* at the end: the summary metrics and the final accuracy matrices (as text).

Off by default and never required: the backends are imported only when asked for. Tracking reads values and never
draws random numbers or changes the model, so a run's result.json is the same with and without it (tested). wandb's
own offline switch (`WANDB_MODE=offline`) is respected; without credentials wandb is started offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.core.errors import ConfigError

BACKENDS = ("tensorboard", "wandb")


class Tracker:
    """The no-op tracker and the interface: backends implement `scalar`, `text` and `close`."""

    active = False

    def scalar(self, name: str, value: float, step: int) -> None:
        pass

    def text(self, name: str, value: str) -> None:
        pass

    def close(self) -> None:
        pass

    # The hooks the trainer and run call; all cheap no-ops when inactive.
    step_count = 0

    def step(self, task: int, loss, opt) -> None:
        """One optimiser step: loss (a tensor: read only when tracking, as it synchronises) and learning rates."""
        if not self.active:
            return
        self.step_count += 1
        self.scalar("train/loss", float(loss.detach()), self.step_count)
        for i, group in enumerate(opt.param_groups):
            self.scalar(f"train/lr/{group.get('name', i)}", float(group["lr"]), self.step_count)
        self.scalar("train/task", task, self.step_count)

    def task_end(self, task: int, acc_row: list[float], curve_value: float, record: dict, grad_norms: dict,
                 val_row: list[float] | None = None) -> None:
        if not self.active:
            return
        for key, values in grad_norms.items():
            for i, v in enumerate(values):
                self.scalar(f"grad_norm/{key}/task_{task}", v, i)
        for j, a in enumerate(acc_row):
            self.scalar(f"acc/task_{j}", a, task)
        for j, a in enumerate(val_row or []):
            self.scalar(f"val_acc/task_{j}", a, task)
        self.scalar("acc/A_t", curve_value, task)
        for key, value in _numbers(record):
            self.scalar(f"method/{key}", value, task)

    def finish(self, result: dict) -> None:
        if not self.active:
            return
        for key, value in result["metrics"].items():
            if isinstance(value, (int, float)):
                self.scalar(f"final/{key}", float(value), 0)
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
                              dir=str(folder), mode=mode, reinit=True)

    def scalar(self, name: str, value: float, step: int) -> None:
        # wandb wants one monotone step: log the series' own step as a field beside the value.
        self.run.log({name: value, f"{name.rsplit('/', 1)[0]}/step": step})

    def text(self, name: str, value: str) -> None:
        self.run.summary[name] = value

    def close(self) -> None:
        self.run.finish()


def run_name(cfg) -> str:
    return f"{cfg.benchmark}/{cfg.method}/seed{cfg.seed}/{cfg.run_id()}"


def open_tracker(kind: str | None, cfg, root: Path) -> Tracker:
    """The tracker for one cell: NULL_TRACKER when `kind` is None; logs under <results>/tracking/."""
    if not kind:
        return NULL_TRACKER
    if kind not in BACKENDS:
        from harness.core.errors import unknown

        raise unknown("--log backend", kind, BACKENDS)
    folder = Path(root) / "tracking"
    if kind == "tensorboard":
        return TensorBoardTracker(folder / run_name(cfg))
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

