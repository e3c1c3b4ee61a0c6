"""Name -> objective registry, filled by a decorator (as timm's ``@register_model``).

Objectives are found, not listed: every module of the `mmssl.objectives` package is imported on the first
lookup (so a new method is one new file), and so are the modules other packages declare under the
``mmssl.objectives`` entry-point group. This module imports nothing of mmssl, so the schema
(`mmssl.config`) -> objectives -> registry graph has no cycle.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, TypeVar

T = TypeVar("T")

_OBJECTIVES: dict[str, type] = {}
_discovered = False


def register_objective(name: str) -> Callable[[T], T]:
    """Class decorator: make an objective selectable as ``objective.name: <name>`` in recipes."""

    def wrap(cls: T) -> T:
        if name in _OBJECTIVES and _OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} is registered twice ({_OBJECTIVES[name].__module__} and "
                             f"{cls.__module__})")
        _OBJECTIVES[name] = cls  # type: ignore[assignment]
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import mmssl.objectives as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    for entry in entry_points(group="mmssl.objectives"):
        entry.load()


def objective_names() -> list[str]:
    _discover()
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> type:
    _discover()
    return _OBJECTIVES[name]
