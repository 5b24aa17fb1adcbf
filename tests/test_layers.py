"""No import runs upward: a package imports only from the layers below it (docs/architecture.md).

Every import is read, the ones inside functions too (a lazy import is still a dependency)."""
from __future__ import annotations

import ast

from tests.conftest import ROOT

LAYERS = ["common", "datamodules", "evaluation", "lightning_modules", "callbacks", "utils", "tasks"]


def _imports(path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def upward_imports(root=ROOT) -> list[str]:
    found = []
    for rank, package in enumerate(LAYERS):
        for path in sorted((root / package).rglob("*.py")):
            for line, target in _imports(path):
                if target in LAYERS and LAYERS.index(target) > rank:
                    found.append(f"{path.relative_to(root)}:{line} imports {target} (layer {LAYERS.index(target)}) "
                                 f"from {package} (layer {rank})")
    return found


def test_no_package_imports_a_higher_layer():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    for package in LAYERS:
        (tmp_path / package).mkdir()
    (tmp_path / "evaluation" / "bad.py").write_text("def f():\n    from lightning_modules.x import y\n")
    (tmp_path / "tasks" / "fine.py").write_text("import evaluation.metrics\n")
    assert upward_imports(tmp_path) == ["evaluation/bad.py:2 imports lightning_modules (layer 3) from evaluation (layer 2)"]
