"""The report reads results only: no module of ``gpuprune.report`` imports the packages that
prune, build or run models."""

from __future__ import annotations

import ast
from pathlib import Path

import gpuprune.report

FORBIDDEN = ("gpuprune.kernels", "gpuprune.models", "gpuprune.prune", "gpuprune.nn",
             "gpuprune.latency")  # fmt: skip


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_report_imports_no_kernels_models_or_prune():
    folder = Path(gpuprune.report.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert files
    for path in files:
        bad = sorted(n for n in _imports(path) if n.startswith(FORBIDDEN))
        assert not bad, f"{path.name} imports {bad}"
