"""Imports point one way (docs: the "Layers" of DESIGN.md): a static check of every import in the
toolkit's sources, at module level and inside functions, relative ones resolved to absolute names.

The sources are read, not imported: the folders install under the flowrl namespace as
pyproject.toml's [tool.setuptools.package-dir] says (samplers/ -> flowrl.samplers, ...). Each
failure lists the offending file:line, the statement and the flowrl module it imports.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# ToyShapes' world: the prompt grammar, scenes, renderer and exact verifier (a leaf that rewards may use).
WORLD = frozenset(
    f"flowrl.benchmarks.toyshapes.{name}" for name in ("prompts", "scene", "render", "verify", "breakdown")
)
# Pure tensor code: credit, losses and objectives.
PURE = ("flowrl.advantage", "flowrl.losses", "flowrl.objectives")
# Importing any module runs the __init__ of each package around it, so these import only what
# every module inside them may: flowrl's nothing of the toolkit, the packages around the world the world.
AROUND_LEAVES = {"flowrl": frozenset(), "flowrl.benchmarks": WORLD, "flowrl.benchmarks.toyshapes": WORLD}


def under(name: str, *prefixes: str) -> bool:
    """True when `name` is one of `prefixes` or a module inside one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. flowrl.rewards.remote
    path: Path
    line: int
    statement: str
    target: str  # the absolute module imported, e.g. flowrl.rewards.wire

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.statement}  (imports {self.target})"


@dataclass(frozen=True)
class Rule:
    name: str
    constrains: Callable[[str], bool]  # the importing modules the rule is about
    allows: Callable[[str, str], bool]  # (importing module, imported flowrl module) -> allowed


RULES = [
    Rule(
        "flowrl.registry imports nothing from flowrl (every layer may use it)",
        lambda m: m == "flowrl.registry",
        lambda m, t: False,
    ),
    Rule(
        "flowrl.samplers imports only flowrl.samplers and flowrl.registry",
        lambda m: under(m, "flowrl.samplers"),
        lambda m, t: under(t, "flowrl.samplers", "flowrl.registry"),
    ),
    Rule(
        "flowrl.rewards imports only flowrl.rewards, flowrl.registry and the ToyShapes world",
        lambda m: under(m, "flowrl.rewards"),
        lambda m, t: under(t, "flowrl.rewards", "flowrl.registry") or t in WORLD,
    ),
    Rule(
        "the ToyShapes world (prompts, scene, render, verify, breakdown) imports only itself",
        lambda m: m in WORLD,
        lambda m, t: t in WORLD,
    ),
    Rule(
        "the ToyShapes evaluation imports only the world (it takes a sampling callable, not a model)",
        lambda m: m == "flowrl.benchmarks.toyshapes.evaluate",
        lambda m, t: t in WORLD,
    ),
    Rule(
        "the packages around the leaves import only what the leaves may (their __init__ runs with them)",
        lambda m: m in AROUND_LEAVES,
        lambda m, t: t in AROUND_LEAVES[m],
    ),
    Rule(
        "flowrl.advantage, flowrl.losses, flowrl.objectives import no trainer, cli, policies, benchmarks or rewards (but the win-rate rule)",
        lambda m: under(m, *PURE),
        lambda m, t: (
            not under(t, "flowrl.trainer", "flowrl.cli", "flowrl.policies", "flowrl.benchmarks", "flowrl.rewards")
            or t == "flowrl.rewards.win_rates"
        ),
    ),
    Rule(
        "only flowrl.__main__ imports flowrl.cli (shared helpers live in flowrl.cli_args)",
        lambda m: m not in ("flowrl.cli", "flowrl.__main__"),
        lambda m, t: not under(t, "flowrl.cli"),
    ),
    Rule(
        "the reward client and server share flowrl.rewards.wire, not each other",
        lambda m: m in ("flowrl.rewards.remote", "flowrl.rewards.serve"),
        lambda m, t: (
            not under(
                t, {"flowrl.rewards.remote": "flowrl.rewards.serve", "flowrl.rewards.serve": "flowrl.rewards.remote"}[m]
            )
        ),
    ),
]


def package_dirs() -> dict[str, Path]:
    """{package: folder} from pyproject.toml's [tool.setuptools.package-dir] ("key" = "value" lines)."""
    text = (REPO / "pyproject.toml").read_text()
    section = re.search(r"^\[tool\.setuptools\.package-dir\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert section, "pyproject.toml has no [tool.setuptools.package-dir] table"
    pairs = re.findall(r'^"([\w.]+)"\s*=\s*"([\w./-]+)"', section.group(1), re.M)
    assert pairs, 'pyproject.toml\'s [tool.setuptools.package-dir] has no "package" = "folder" lines this test can read'
    return {package: REPO / folder for package, folder in pairs}


@cache
def sources() -> dict[str, Path]:
    """{module name: file} of every .py file under the package folders."""
    modules = {}
    for package, folder in package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(module: str, path: Path, source: str, known: frozenset[str] | set[str]) -> list[Import]:
    """Every import in `source` (anywhere in the file), as absolute module names. `from P import n`
    imports the module P.n when `known` holds it, else P; importlib.import_module("literal") counts."""
    tree = ast.parse(source, str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found, seen = [], set()

    def add(node: ast.AST, target: str) -> None:
        if (
            node.lineno,
            node.col_offset,
            target,
        ) in seen:  # `from .serve import a, b`: one import of flowrl.rewards.serve
            return
        seen.add((node.lineno, node.col_offset, target))
        statement = " ".join((ast.get_source_segment(source, node) or "").split())
        found.append(Import(module, path, node.lineno, statement, target))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise AssertionError(
                        f"{path}:{node.lineno}: a relative import above the top-level package {parts[0]}"
                    )
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                child = f"{base}.{alias.name}"
                add(node, child if child in known else base)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
        ):
            add(node, node.args[0].value)
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    modules = sources()
    known = frozenset(modules)
    return tuple(
        i for module, path in modules.items() for i in imports_of(module, path, path.read_text(encoding="utf-8"), known)
    )


def violations(rule: Rule) -> list[Import]:
    return [
        i
        for i in all_imports()
        if rule.constrains(i.module) and under(i.target, "flowrl") and not rule.allows(i.module, i.target)
    ]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_imports_point_one_way(rule):
    assert any(rule.constrains(m) for m in sources()), f"the rule {rule.name!r} constrains no module: is a name wrong?"
    bad = violations(rule)
    assert not bad, f"{rule.name}; {len(bad)} import(s) break it:\n" + "\n".join(map(str, bad))


def test_the_sources_map_to_their_installed_names():
    modules = sources()
    assert modules["flowrl.samplers.methods.registry"] == REPO / "samplers" / "methods" / "registry.py"
    assert modules["flowrl.rewards"] == REPO / "rewards" / "__init__.py"
    assert WORLD | {"flowrl.registry", "flowrl.cli", "flowrl.rewards.wire", "flowrl.trainer"} <= set(modules)


def test_the_scanner_resolves_relative_imports_and_sees_inside_functions(tmp_path):
    source = (
        "import torch\n"
        "from . import wire\n"
        "from .base import check_images, check_scores\n"
        "from ..benchmarks.toyshapes import verify\n"
        "def load():\n"
        "    from flowrl.cli import main\n"
        "    import flowrl.trainer as trainer\n"
        "    return importlib.import_module('flowrl.policies')\n"
    )
    known = {"flowrl.rewards.wire", "flowrl.rewards.base", "flowrl.benchmarks.toyshapes.verify"}
    found = imports_of("flowrl.rewards.remote", tmp_path / "remote.py", source, known)
    assert [(i.line, i.target) for i in found] == [
        (1, "torch"),
        (2, "flowrl.rewards.wire"),
        (3, "flowrl.rewards.base"),
        (4, "flowrl.benchmarks.toyshapes.verify"),
        (6, "flowrl.cli"),
        (7, "flowrl.trainer"),
        (8, "flowrl.policies"),
    ]
    init = imports_of("flowrl.rewards", tmp_path / "__init__.py", "from .base import x\n", set())
    assert [i.target for i in init] == [
        "flowrl.rewards.base"
    ]  # a package's own __init__ is the base of its relative imports
