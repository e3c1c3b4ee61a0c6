"""Name -> objective registry, filled by a decorator (as timm's ``@register_model``).

Objectives are found, not listed (a new method is one new file): the modules of the `mmssl.objectives` package
are read, not imported, for their ``@register_objective("name")`` lines, and a lookup imports only the module of
the objective asked for (a text recipe never imports the image stack); a name registered otherwise is found by
importing every module, and so are the modules other packages declare under the ``mmssl.objectives``
entry-point group. This module imports nothing of mmssl, so the schema (`mmssl.config`) -> objectives ->
registry graph has no cycle.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from importlib.metadata import entry_points
from typing import Callable, TypeVar

T = TypeVar("T")

_OBJECTIVES: dict[str, type] = {}
_discovered = False
_plugins_loaded = False
_index: dict[str, str] | None = None  # name -> module, from the source of mmssl.objectives
_REGISTRATION = re.compile(r"""^@register_objective\(\s*["']([^"']+)["']\s*\)""", re.M)


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


def _find() -> dict[str, str]:
    """Which module of `mmssl.objectives` registers which name, read from the modules' source."""
    global _index
    if _index is None:
        import mmssl.objectives as package

        _index = {}
        for module in pkgutil.iter_modules(package.__path__):
            if module.name.startswith("_"):
                continue
            path = getattr(module.module_finder, "path", None)
            source = f"{path}/{module.name}.py" if path else None
            try:
                text = open(source, encoding="utf-8").read() if source else ""
            except OSError:
                text = ""
            for name in _REGISTRATION.findall(text):
                _index[name] = f"{package.__name__}.{module.name}"
    return _index


def _load_plugins() -> None:
    """Import the modules other packages declare under the ``mmssl.objectives`` entry-point group (once)."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for entry in entry_points(group="mmssl.objectives"):
            entry.load()


def _discover() -> None:
    """Import every objective module: for a name registered in a way `_find` cannot read."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import mmssl.objectives as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def objective_names() -> list[str]:
    _load_plugins()
    return sorted(set(_find()) | set(_OBJECTIVES))


def get_objective(name: str) -> type:
    if name not in _OBJECTIVES and name in _find():
        importlib.import_module(_find()[name])
    if name not in _OBJECTIVES:
        _load_plugins()
    if name not in _OBJECTIVES:
        _discover()
    return _OBJECTIVES[name]
