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


# -- layering: lower packages never import higher ones, nothing imports another package's private module, no
# import circles (counting imports inside functions too) ---------------------------------------------------------
HIGHER = {"commands", "train", "objectives", "hub", "report", "mining", "evaluate", "sweep"}
LAYERS = {"data": HIGHER | {"eval", "models", "losses"}, "models": HIGHER | {"eval"},
          "losses": HIGHER | {"eval", "models", "data"}, "eval": HIGHER}


def _imports() -> dict[str, set[str]]:
    """Every mmssl module and the mmssl modules it imports, anywhere in its code."""
    import ast

    package = ROOT / "mmssl"
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in package.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph


def test_layers_import_downwards_only():
    wrong = [f"{name} imports {dep}" for name, deps in _imports().items() for dep in deps
             if dep.split(".")[1] in LAYERS.get(name.split(".")[1] if "." in name else "", ())
             or (any(part.startswith("_") and part != "__main__" for part in dep.split(".")[1:])
                 and dep.split(".")[1] != name.split(".")[1])]
    assert not wrong, wrong


def test_no_import_circles():
    graph, seen, circles = _imports(), set(), []

    def walk(name: str, path: list[str]) -> None:
        for dep in graph[name]:
            if dep in path:
                circles.append(path[path.index(dep):] + [dep])
            elif dep not in seen:
                walk(dep, path + [dep])
        seen.add(name)

    for name in graph:
        if name not in seen:
            walk(name, [name])
    # a package's __init__ re-exporting its own modules is not a circle
    real = [c for c in circles if not any(a == b.rsplit(".", 1)[0] or b == a.rsplit(".", 1)[0]
                                          for a, b in zip(c, c[1:]))]
    assert not real, real
