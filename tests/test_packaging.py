"""The package as installed: every subpackage is listed in pyproject.toml (they are listed, not found, because
the card templates ship from the top-level model_cards/ folder), and objectives are found without a list."""

from __future__ import annotations

import tomllib

from helpers import ROOT


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mmssl").rglob("__init__.py")}
    assert found | {"mmssl.model_cards"} == listed


def test_card_templates_ship_inside_the_package():
    from mmssl.hub import card_templates

    names = {p.name for p in card_templates().iterdir()}
    assert {"_common.md", "mlm.md", "clm.md", "sentence_embedding.md", "clip.md", "mined_dataset.md"} <= names


def test_every_objective_module_registers_and_declares_its_output():
    import pkgutil

    import mmssl.objectives
    from mmssl.objectives.base import ModelOutput
    from mmssl.registry import get_objective, objective_names

    modules = {m.name for m in pkgutil.iter_modules(mmssl.objectives.__path__)} - mmssl.objectives.SHARED_MODULES
    registered = {get_objective(n).__module__.rsplit(".", 1)[1] for n in objective_names()}
    assert modules <= registered
    for name in objective_names():
        assert isinstance(get_objective(name).output, ModelOutput), name
