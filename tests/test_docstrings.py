"""Every public function of the protocol's parts has a docstring, and no text cites a file outside the
repository (issue 15). Read with ``ast``: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mpu"
# The packages of the protocol's parts: the wire format, both parties, the transforms, the audit.
DOCUMENTED = ("protocol", "server", "client", "reparam", "audit")
# Files outside the repository that text once cited (split so that this file does not cite them).
OUTSIDE = ("SPEC" + " §", "SPEC" + ".md", "ENVIRONMENT" + ".md")


def public_functions(path: Path) -> list[tuple[str, int, bool]]:
    """(qualified name, line, has a docstring) for every public function and public method of a public
    class in ``path``; nested functions are not public API and are skipped."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and not child.name.startswith("_"):
                found.append((prefix + child.name, child.lineno, ast.get_docstring(child) is not None))
            elif isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


def undocumented(package: str) -> list[str]:
    return [f"{path.relative_to(SRC)}:{line} {name}"
            for path in sorted((SRC / package).rglob("*.py"))
            for name, line, documented in public_functions(path) if not documented]


@pytest.mark.parametrize("package", DOCUMENTED)
def test_every_public_function_has_a_docstring(package):
    assert undocumented(package) == []


def test_the_check_sees_a_missing_docstring(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('def documented():\n    """Yes."""\n\n\ndef bare():\n    pass\n\n\ndef _private():\n    pass\n\n\n'
                      'class Public:\n    def method(self):\n        pass\n\n\nclass _Hidden:\n    def method(self):\n        pass\n')
    assert [(name, has) for name, _, has in public_functions(module)] == [("documented", True), ("bare", False),
                                                                         ("Public.method", False)]


def test_no_text_cites_a_file_outside_the_repository():
    places = [ROOT / "src", ROOT / "tests", ROOT / "benchmarks", ROOT / "docs", ROOT / "configs", ROOT / "README.md"]
    files = [p for place in places for p in ([place] if place.is_file() else place.rglob("*"))
             if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".yml", ".txt", ".toml"}]
    cited = [f"{path.relative_to(ROOT)}: {word}" for path in files for word in OUTSIDE
             if word in path.read_text(encoding="utf-8", errors="replace")]
    assert len(files) > 100 and cited == []
