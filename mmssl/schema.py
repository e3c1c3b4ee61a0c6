"""Build typed dataclasses from plain dicts, with errors that name the dotted key and the allowed values."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from mmssl.errors import RecipeError

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class RangeError(RecipeError):
    """A number outside the range its key allows (never masked by the other members of a union)."""


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric key, attached as ``Annotated[int, Range(1)]``; bounds are inclusive
    unless ``open_low``/``open_high``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    hint: str = ""  # appended to the error, e.g. typical values

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {_number(self.high)}")
        return " and ".join(parts) or "any number"

    def check(self, value: float, path: str) -> None:
        low_bad = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        high_bad = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if low_bad or high_bad:
            hint = f"; {self.hint}" if self.hint else ""
            raise RangeError(f"{path}: {value!r} is out of range; it must be {self.describe()}{hint}")


# The numeric key types of recipes: every int and float key of a config carries a Range.
PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, open_low=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Probability = Annotated[float, Range(0, 1)]
Seed = Annotated[int, Range(0, 2**32 - 1)]


def range_of(tp: Any) -> Range | None:
    """The Range attached to an annotation (through Optional), or None."""
    if get_origin(tp) is Annotated:
        return next((m for m in get_args(tp)[1:] if isinstance(m, Range)), None)
    if get_origin(tp) in (Union, types.UnionType):
        return next((r for a in get_args(tp) if (r := range_of(a)) is not None), None)
    return None


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extras = get_args(tp)
        limits = [m.describe() for m in extras if isinstance(m, Range)]
        return _describe(base) + (f" {' and '.join(limits)}" if limits else "")
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the type annotation `tp` and return it converted (nested dataclasses built)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = get_args(tp)
        value = coerce(value, base, path)
        for extra in extras:
            if isinstance(extra, Range):
                extra.check(value, path)
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:  # Optional[X]: X's own error says more than "expected X or null"
            return coerce(value, members[0], path)
        for arg in members:
            try:
                return coerce(value, arg, path)
            except RangeError:
                raise
            except RecipeError:
                pass
        raise RecipeError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise RecipeError(f"{path}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}{extra}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RecipeError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise RecipeError(f"{path}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise RecipeError(f"{path}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{path}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [coerce(v, item_tp, _join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {str(k): coerce(v, val_tp, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def from_dict(cls: type, raw: Any, path: str = "") -> Any:
    """Build dataclass `cls` from `raw`, rejecting unknown keys and missing required fields."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise RecipeError(
                f"{_join(path, str(key))}: unknown key{extra}; allowed keys here: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    for name, field in fields.items():
        if name in raw:
            kwargs[name] = coerce(raw[name], hints[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{_join(path, name)}: required key is missing ({_describe(hints[name])})")
    try:
        return cls(**kwargs)
    except (ValueError, RecipeError) as exc:
        raise RecipeError(f"{path or 'recipe'}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain-data form of a (nested) dataclass, suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
