"""The package walls of docs/ARCHITECTURE.md, checked on the source text.

plans/ is the contract everyone speaks and imports nothing else of the project; planner/ and
estimator/ are torch-free (the search runs on a laptop, and the estimator's rules must not
quietly depend on the runtime); only executor/ and cli/ touch torch. Private names stay in
their module, and no source file grows past 400 lines (one idea per file).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("plans", "planner", "estimator", "executor", "cli")
FORBIDDEN = {
    "plans": {"torch", "planner", "estimator", "executor", "cli"},
    "planner": {"torch", "executor", "cli"},
    "estimator": {"torch", "planner", "executor", "cli"},
    "executor": {"planner", "cli"},
}


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import, also inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources(package)
        for line, module, _ in _imports(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    bad = [
        f"{path.relative_to(ROOT)}:{line} takes {name} from {module}"
        for package in PACKAGES
        for path in _sources(package)
        for line, module, names in _imports(path)
        if module.split(".")[0] in PACKAGES
        for name in names
        if name.startswith("_")
    ]
    assert not bad, "\n".join(bad)


def test_no_file_over_400_lines():
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for package in PACKAGES
        for path in _sources(package)
        if (n := len(path.read_text().splitlines())) > 400
    ]
    assert not long, "\n".join(long)
