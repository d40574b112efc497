"""Every third-party package fewlabel imports is declared in pyproject.toml: imports that run when a module is
imported in the core dependencies, imports inside functions (optional features) at least in an extra."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return _normalise(match.group(0))


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for group in project.get("optional-dependencies", {}).values() for r in group}
    return core, extras


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(top-level module name, imported when the module is imported) for every absolute import."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], eager) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], eager))
            lazy = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, eager and not lazy)

    visit(tree, True)
    return found


def test_every_imported_package_is_declared() -> None:
    core, extras = _declared()
    distributions = packages_distributions()
    missing: list[str] = []
    for path in sorted((ROOT / "src" / "fewlabel").rglob("*.py")):
        for module, eager in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if module in sys.stdlib_module_names or module == "fewlabel":
                continue
            # The installed distributions that provide the module; not installed: its name as the project name.
            names = {_normalise(d) for d in distributions.get(module, [])} or {_normalise(module)}
            allowed = core if eager else core | extras
            if not names & allowed:
                where = "dependencies" if eager else "dependencies or an extra"
                missing.append(f"{path.relative_to(ROOT)}: {module} ({'/'.join(sorted(names))}) not in {where}")
    assert not missing, "\n".join(missing)


def test_the_scan_sees_eager_and_optional_imports() -> None:
    source = ("import os\nimport numpy as np\nfrom scipy import stats\nfrom typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    import transformers\n"
              "def f():\n    import nltk\n    from .x import y\n")
    assert _imports(ast.parse(source)) == [("os", True), ("numpy", True), ("scipy", True), ("typing", True),
                                           ("nltk", False)]
