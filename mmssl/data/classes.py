"""Class names given by a user or read from data: distinct and non-empty, or one clear error."""

from __future__ import annotations

from collections.abc import Sequence

from mmssl.errors import RecipeError


def check_classes(class_names: Sequence[str], where: str = "objective.class_names") -> None:
    """Raise `RecipeError` on duplicate (case/space-insensitive) or empty class names."""
    seen: dict[str, str] = {}
    dupes = set()
    for name in class_names:
        key = " ".join(str(name).lower().split())
        if not key:
            raise RecipeError(f"{where}: empty class name in {list(class_names)}")
        if key in seen:
            dupes.update({seen[key], name})
        seen.setdefault(key, name)
    if dupes:
        raise RecipeError(
            f"{where}: duplicate class names {sorted(dupes)}; zero-shot classification needs distinct class names"
        )
