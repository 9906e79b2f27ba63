"""Contracts every registered method passes, found automatically (a new file in methods/ is included):

* resume equivalence — a run stopped after task 0, and a run killed in the middle of task 1 (after its first epoch),
  resumed from their checkpoints in a fresh setup, end with bit-identical final weights (merged k/v, heads, adapters),
  method state and records (accuracies, method records, gradient norms) to an uninterrupted run (CPU). A method that
  does not save its state, or restores it wrongly, fails here whatever its accuracies;
* seed sensitivity — a method whose `draws_random` is True must change when only its own random draws are reseeded
  (the run seed its generators derive from changes; the head/LoRA initialisation and batch order are held fixed),
  and a method that declares False must not change at all: the declaration is checked both ways, so a method that
  ignores the run seed (a constant generator) or draws undeclared randomness fails;
* every Fisher pass (harness/math/fisher.py empirical_fisher, however a method reaches it) runs in eval mode: dropout
  in a backbone would otherwise make the Fisher a random quantity.

Two tasks of the bundled digits (2 × 5 classes) on the 2-block test ViT, thinned to every THIN-th sample (about 90
training and 45 test images per task: 3 steps per epoch), two epochs per task: five short runs per method
(uninterrupted, killed mid-task, resumed after a task, resumed mid-task, reseeded).
"""

from __future__ import annotations

import sys

import pytest
import torch

from harness.config import ExecConfig
from harness.core.seeding import derive_seed
from harness.method.registry import get_method, method_names
from harness.resolve import resolve
from harness.train.setup import build
from harness.train.trainer import run_tasks
from tests.conftest import FAST
from tests.fakes import crash_in_task_1

QUIET = ExecConfig(progress=False, background_checkpoints=False)
TWO_EPOCHS = {**FAST, "train.epochs": 2, "train.batch_size": 32}
THIN = 8


@pytest.fixture(autouse=True)
def thin_stream(monkeypatch):
    """Every run of these tests sees each task's samples thinned to every THIN-th (the same for every run)."""
    import dataclasses

    import harness.train.setup as setup

    real = setup.stream_of

    def thinned(*args, **kwargs):
        stream = real(*args, **kwargs)
        tasks = tuple(dataclasses.replace(t, train_indices=t.train_indices[::THIN], test_indices=t.test_indices[::THIN])
                      for t in stream.tasks)
        return dataclasses.replace(stream, tasks=tasks)

    monkeypatch.setattr(setup, "stream_of", thinned)
INIT_PARTS = ("head", "lora")  # task_seed names of the initialisation, held fixed by the seed contract


def _cfg(method: str):
    return resolve("split-digits-2x5", method, seed=0, overrides=TWO_EPOCHS)


def assert_same(a, b, where: str = "") -> None:
    """Bit-identical nested structures of tensors, numbers, strings, lists and dicts (NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        pass
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def without_timings(obj):
    """`obj` without the wall-clock entries of method records (keys naming seconds, e.g. TRM's merge_seconds)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if "seconds" not in str(k)}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def outcome(s, state) -> dict:
    """What must match: final weights, method state, and the run's records (wall-clock times aside)."""
    return {"weights": s.model.trainable_state(), "method_state": s.method.state_dict(), "acc": state.acc,
            "task_aware": state.task_aware, "records": without_timings(state.method_records),
            "grad_norms": state.grad_norms}


class FisherModes:
    """Wraps every reachable `empirical_fisher` to record the model's training flag inside each forward of the pass."""

    def __init__(self, monkeypatch):
        import harness.math.fisher as fisher

        self.modes: list[bool] = []
        real = fisher.empirical_fisher

        def spy(model, batches, loss_fn, *args, **kwargs):
            def loss(x, y):
                self.modes.append(model.training)
                return loss_fn(x, y)

            return real(model, batches, loss, *args, **kwargs)

        monkeypatch.setattr(fisher, "empirical_fisher", spy)
        for name, module in list(sys.modules.items()):  # methods that imported it by name
            if name.startswith("methods.") and getattr(module, "empirical_fisher", None) is real:
                monkeypatch.setattr(module, "empirical_fisher", spy)


_REFERENCE: dict[str, tuple[dict, list[bool]]] = {}


def reference(method: str) -> tuple[dict, list[bool]]:
    """The uninterrupted run's outcome and the training flags seen by its Fisher passes (computed once per method)."""
    if method not in _REFERENCE:  # (called inside a test: the stream is thinned)
        with pytest.MonkeyPatch.context() as mp:
            spy = FisherModes(mp)
            s = build(_cfg(method), QUIET)
            _REFERENCE[method] = (outcome(s, run_tasks(s, QUIET)), spy.modes)
    return _REFERENCE[method]


@pytest.fixture(params=method_names())
def method(request):
    return request.param


def test_resume_after_a_task_and_mid_task_is_bit_identical(method, tmp_path, monkeypatch):
    """One run killed at the 2nd step of epoch 1 of task 1 leaves checkpoint.pt (after task 0) and
    checkpoint.epoch.pt (task 1 after epoch 0). Resumed from checkpoint.pt alone (a stop after the task) and from
    both (mid-task), each in a fresh setup, both end exactly as the uninterrupted run."""
    import shutil

    cfg = _cfg(method)
    ckpt = tmp_path / "checkpoint.pt"
    cls = get_method(method)
    with pytest.MonkeyPatch.context() as crash:
        crash_in_task_1(crash, cls, cfg, epochs_done=1)
        with pytest.raises(KeyboardInterrupt):
            run_tasks(build(cfg, QUIET), QUIET, checkpoint=ckpt)
    ep = torch.load(tmp_path / "checkpoint.epoch.pt", weights_only=False)
    assert (ep["task"], ep["epochs_done"]) == (1, 1)
    after_task = tmp_path / "after-task" / "checkpoint.pt"
    after_task.parent.mkdir()
    shutil.copy(ckpt, after_task)  # without the epoch checkpoint: task 1 starts again from its beginning
    for path, how in ((after_task, "after task 0"), (ckpt, "mid-task 1")):
        s = build(cfg, QUIET)  # a fresh start: everything rebuilt, state from disk
        assert_same(outcome(s, run_tasks(s, QUIET, checkpoint=path)), reference(method)[0], f"{method} resumed {how}")


def test_fisher_passes_run_in_eval_mode(method):
    modes = reference(method)[1]
    assert not any(modes), f"{method}: {sum(modes)} of {len(modes)} Fisher-pass forwards ran in train mode"


def test_draws_random_is_declared_and_follows_the_run_seed(method):
    """Only the method's own draws are reseeded: its `seed` (what `generator(self.seed, ...)` and `task_seed` use) is
    changed, while `task_seed` keeps the initialisation names ('head', 'lora') on the original seed."""
    cls = get_method(method)
    s = build(_cfg(method), QUIET)
    s.method.seed = 1
    s.method.task_seed = lambda *parts: derive_seed(0 if parts and parts[0] in INIT_PARTS else 1, *parts)
    reseeded = outcome(s, run_tasks(s, QUIET))
    try:
        assert_same(reseeded, reference(method)[0])
        same = True
    except AssertionError:
        same = False
    if cls.draws_random:
        assert not same, f"{method} declares draws_random but ignores the run seed: reseeding changed nothing"
    else:
        assert same, f"{method} changes with the run seed of its own draws: declare `draws_random = True`"


def test_fisher_pass_restores_the_mode_and_runs_in_eval(monkeypatch):
    """The pass itself, on a model with dropout-like behaviour: eval inside, the caller's mode restored after."""
    from harness.math.fisher import empirical_fisher

    cfg = _cfg("seq-lora")
    s = build(cfg, QUIET)
    task = s.stream.tasks[0]
    s.method.begin_task(s.model, task)
    seen: list[bool] = []
    model = s.model
    model.train()

    def loss(x, y):
        seen.append(model.training)
        return torch.nn.functional.cross_entropy(model.heads.heads[-1](model.features(x)), y - task.offset)

    batches = s.train_bank.iterate(task.train_indices[:8], 4)
    empirical_fisher(model, batches, loss)
    assert seen == [False, False] and model.training
