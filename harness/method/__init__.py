"""What a method author imports, from one short path:

    from harness.method import Method, TaskData, register

`Method` (harness/method/base.py) is the base class with the lifecycle hooks the shared loop calls (`begin_task`,
`training_loss`, `after_backward`, `end_epoch`, `end_task`, `eval_model`); `register` (harness/method/registry.py)
makes a subclass available by name. One module per method lives in methods/ and is discovered on first lookup.
"""

from harness.method.base import Method, MethodContext, TaskData
from harness.method.registry import get_method, method_names, register

__all__ = ["Method", "MethodContext", "TaskData", "get_method", "method_names", "register"]
