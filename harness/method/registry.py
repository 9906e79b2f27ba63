"""The method registry: every module in `methods/` that defines a `Method` subclass with `@register` is found.

Discovery imports the modules of the `methods` package on first lookup (not at `import harness`), so adding a
method is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.core.errors import unknown
from harness.method.base import Method

_REGISTRY: dict[str, type[Method]] = {}
_DISCOVERED = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method available under `cls.name`."""
    if not getattr(cls, "name", None) or not getattr(cls, "description", None):
        raise TypeError(f"{cls.__qualname__}: a registered method needs `name` and `description`")
    other = _REGISTRY.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"method name {cls.name!r} registered twice ({other.__module__}, {cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    _DISCOVERED = True


def method_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    _discover()
    if name not in _REGISTRY:
        raise unknown("method", name, list(_REGISTRY))
    return _REGISTRY[name]
