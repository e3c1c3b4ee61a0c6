"""The documentation stays true: the site builds strictly, the README stays short, the recipe reference is what the
schema generates now, and every mmssl command shown in a ```bash block parses, with its recipe validating.

Fast (a few seconds): nothing trains. A command that is meant to fail (an error example) belongs in a
```console block, which is not checked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_SEPARATORS = {"&&", "||", ";", "|"}
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# -- finding the commands --------------------------------------------------------------------------------------------
def bash_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, logical line) of every line inside a ```bash fence; backslash continuations joined."""
    found: list[tuple[int, str]] = []
    fence = None  # (marker, language) of the open fence
    pending, start = "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = (match.group(2), match.group(3).lower())
            continue
        if match and match.group(2).startswith(fence[0][0]) and len(match.group(2)) >= len(fence[0]) \
                and not match.group(3):
            fence = None
            continue
        if fence[1] not in ("bash", "sh", "shell"):
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append((start, pending + line))
        pending = ""
    return found


def mmssl_args(tokens: list[str]) -> list[str] | None:
    """The arguments after `mmssl` in one simple command (env assignments and launchers stripped), or None when it
    does not run mmssl. ``-m mmssl.something`` is returned as ``["-m", module]`` so that the check fails on it."""
    while tokens and _ENV.match(tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    program = Path(tokens[0]).name
    if program == "mmssl":
        return tokens[1:]
    launcher = program.startswith("python") or program == "torchrun" or tokens[:2] == ["accelerate", "launch"]
    if launcher and "-m" in tokens:
        at = tokens.index("-m")
        module = tokens[at + 1] if at + 1 < len(tokens) else ""
        if module == "mmssl":
            return tokens[at + 2:]
        if module.startswith("mmssl"):
            return ["-m", module]
    return None


def commands_in(path: Path, root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """("FILE:LINE", mmssl arguments) of every mmssl command in the ```bash blocks of `path` (named below `root`)."""
    out = []
    for number, line in bash_blocks(path):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:  # unbalanced quotes: a broken example
            out.append((f"{path.relative_to(root)}:{number}", ["<unparsable shell line>", str(exc), line]))
            continue
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token in _SEPARATORS:
                args = mmssl_args(segment)
                if args is not None:
                    out.append((f"{path.relative_to(root)}:{number}", args))
                segment = []
            else:
                segment.append(token)
    return out


def documented_commands() -> list[tuple[str, list[str]]]:
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    return [command for page in pages for command in commands_in(page)]


# -- checking one command -----------------------------------------------------------------------------------------------
def check_command(args: list[str]) -> None:
    """Raise AssertionError unless `args` parse as an mmssl command line and, for `train`/`check` (and `mine`,
    `augment`, `sweep`), the recipe exists and validates with its overrides. Nothing runs."""
    from mmssl.commands import build_parser
    from mmssl.errors import MmsslError

    assert args[:1] != ["-m"], f"no such module: python -m {args[1]} (run `mmssl ...` or `python -m mmssl ...`)"
    assert not (args and args[0] == "<unparsable shell line>"), f"{args[1]}: {args[2]}"
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exc:
        assert exc.code == 0, f"mmssl {shlex.join(args)}: the argument parser refuses it (exit status {exc.code})"
        return  # --help
    recipe = getattr(parsed, "recipe", None) or getattr(parsed, "config", None)
    if recipe is None:
        return
    path = ROOT / recipe
    assert path.is_file(), f"mmssl {shlex.join(args)}: the recipe {recipe} does not exist"
    try:
        if parsed.command in ("train", "check"):
            from mmssl.recipes import load_recipe

            load_recipe(path, parsed.overrides)
        elif parsed.command == "mine":
            from mmssl.mining.config import load_mining_config

            load_mining_config(path, parsed.overrides)
        elif parsed.command == "augment":
            from mmssl.augment import load_config

            load_config(path, parsed.overrides)
        elif parsed.command == "sweep":  # the recipe itself (the grid's values are checked by the sweep)
            from mmssl.recipes import load_recipe

            load_recipe(path, [item for item in parsed.grid if "," not in item.split("=", 1)[-1]])
    except (MmsslError, ValueError, TypeError) as exc:
        raise AssertionError(f"mmssl {shlex.join(args)}: the recipe does not validate: {exc}") from None


COMMANDS = documented_commands()


# -- the tests ------------------------------------------------------------------------------------------------------
def test_the_site_builds_strictly(tmp_path):
    """No broken link, anchor, image or snippet, no page left out of the nav (mkdocs.yml's `validation`)."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move detail into docs/"


def test_recipe_reference_is_generated_from_the_schema_as_it_is_now():
    spec = importlib.util.spec_from_file_location("recipe_reference", ROOT / "scripts" / "recipe_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "recipes.md").read_text(encoding="utf-8") == module.render(), \
        "docs/recipes.md is out of date: run python scripts/recipe_reference.py"


def test_the_docs_show_commands_to_check():
    """The extraction finds what it must, so the parametrised check below cannot pass by finding nothing."""
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert len(COMMANDS) >= 40 and "README.md" in where and "docs/getting-started.md" in where, sorted(where)
    assert ("README.md", ["train", "configs/mlm_world.yaml", "train.overwrite=true"]) in \
        [(w.split(":")[0], a) for w, a in COMMANDS]  # the main job, inside the install command's && chain
    kinds = {a[0] for _, a in COMMANDS if a}
    assert {"train", "check", "eval", "push", "mine", "augment", "report", "sweep", "prepare"} <= kinds, kinds


@pytest.mark.parametrize("bad", [
    "mmssl train configs/mlm_world.yaml train.batchsize=8",  # an unknown key
    "mmssl train configs/mlm_world.yaml train.warmup_ratio=5",  # out of range
    "mmssl train configs/no_such_recipe.yaml",
    "python -m mmssl.cli train configs/mlm_world.yaml",
    "torchrun --nproc_per_node 2 -m mmssl trian configs/mlm_world.yaml",
    "mmssl push runs/mlm_world --repo-id my-org/x [--private]",
    "mmssl mine configs/mine_world_bm25.yaml no_such_key=1",
])
def test_the_check_refuses_wrong_commands(tmp_path, bad):
    page = tmp_path / "page.md"
    page.write_text(f"```bash\n{bad}   # a comment\n```\n", encoding="utf-8")
    ((_, found),) = commands_in(page, root=tmp_path)
    with pytest.raises(AssertionError):
        check_command(found)


@pytest.mark.parametrize("where, args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses_and_its_recipe_validates(where, args):
    check_command(args)
