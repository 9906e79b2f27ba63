"""The contract every registered method passes — new methods are included automatically.

Two tasks of the bundled digits (2 × 5 classes) on the 2-block test ViT, one epoch per task.
"""

import pytest
import torch

from harness.config import ExecConfig
from harness.method.registry import get_method, method_names
from harness.resolve import resolve
from harness.train.checkpoints import load_checkpoint
from harness.train.setup import build
from harness.train.trainer import run_tasks
from tests.conftest import FAST

QUIET = ExecConfig(progress=False)


def _numel(obj) -> int:
    """Size of a method's between-task state: tensor elements plus entries of containers."""
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, dict):
        return sum(_numel(v) for v in obj.values()) + len(obj)
    if isinstance(obj, (list, tuple)):
        return sum(_numel(v) for v in obj) + len(obj)
    return 1


@pytest.fixture(params=method_names())
def method(request):
    return request.param


def test_declares_name_description_and_typed_params(method):
    cls = get_method(method)
    assert cls.name == method and cls.description and "\n" not in cls.description
    cls.Params()  # every hyper-parameter has a default
    assert cls.__module__.startswith("methods.") and (cls.__doc__ or __import__(cls.__module__).__doc__)


def test_two_tasks_end_to_end_and_state_restores(method, tmp_path):
    cfg = resolve("split-digits-2x5", method, seed=0, overrides=FAST)
    s = build(cfg, QUIET)
    ckpt = tmp_path / "ckpt.pt"
    state = run_tasks(s, QUIET, checkpoint=ckpt)
    # evaluated after each task on every seen task, accuracies are probabilities
    assert [len(r) for r in state.acc] == [1, 2]
    assert all(0.0 <= a <= 1.0 for row in state.acc + state.task_aware for a in row)
    assert len(state.method_records) == 2
    # the evaluation model predicts over all seen classes, with no task id
    model = s.method.eval_model(s.model)
    x, _ = next(s.test_bank.iterate(s.stream.tasks[1].test_indices, 32))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (len(x), 10) and torch.isfinite(logits).all()
    # the saved state restores to identical predictions
    fresh = build(cfg, QUIET)
    load_checkpoint(ckpt, fresh)
    with torch.no_grad():
        assert torch.equal(fresh.method.eval_model(fresh.model)(x), logits)


def test_constant_memory_methods_do_not_grow(method, tmp_path):
    cls = get_method(method)
    if not cls.constant_memory:
        pytest.skip(f"{method} declares that its state grows with the number of tasks")
    cfg = resolve("split-digits", method, seed=0, overrides={**FAST, "train.batch_size": 128})
    s = build(cfg, QUIET)
    sizes, state = [], None
    for t in range(1, 4):
        state = run_tasks(s, QUIET, stop_after=t, state=state)  # the same in-memory run, task by task
        sizes.append(_numel(s.method.state_dict()))
    assert sizes[1] == sizes[2], f"{method} state grew from {sizes[1]} to {sizes[2]} entries between tasks 2 and 3"
