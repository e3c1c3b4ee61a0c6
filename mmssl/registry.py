"""Name -> implementation registries, filled by decorators (as timm's ``@register_model``)."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")

_OBJECTIVES: dict[str, type] = {}


def register_objective(name: str) -> Callable[[T], T]:
    """Class decorator: make an objective selectable as ``objective.name: <name>`` in recipes."""

    def wrap(cls: T) -> T:
        if name in _OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        _OBJECTIVES[name] = cls  # type: ignore[assignment]
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def _load_builtin() -> None:
    import mmssl.objectives  # noqa: F401  (registers the built-in objectives)


def objective_names() -> list[str]:
    _load_builtin()
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> type:
    _load_builtin()
    return _OBJECTIVES[name]
