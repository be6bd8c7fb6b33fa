"""Source-level guarantees, checked on every module: no code from files, no unsafe writes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "gpuprune"
MODULES = sorted(SRC.rglob("*.py"))
# Writes that need not be atomic: the C source compiled inside a fresh temporary folder.
NON_ATOMIC_OK = {("kernels/cpu/build.py", "write_text")}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(
                func.value, ast.Name) else ""  # fmt: skip
            yield node, owner, name


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC)}:{node.lineno}"


def test_torch_load_only_with_weights_only():
    bad = [_where(p, n) for p in MODULES for n, owner, name in _calls(p)
           if owner == "torch" and name == "load" and not any(
               k.arg == "weights_only" and getattr(k.value, "value", None) is True
               for k in n.keywords)]  # fmt: skip
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_no_pickle_or_marshal_loading():
    bad = [_where(p, n) for p in MODULES for n, owner, name in _calls(p)
           if owner in ("pickle", "marshal", "dill", "cloudpickle") and name in ("load", "loads")
           or isinstance(n.func, ast.Name) and name in ("eval", "exec")]  # fmt: skip
    assert not bad, f"code-executing loads: {bad}"


@pytest.mark.parametrize("kind", ["write_text/write_bytes", "open for writing", "savefig"])
def test_files_are_written_through_the_atomic_writer(kind):
    bad = []
    for p in MODULES:
        rel = str(p.relative_to(SRC))
        if rel == "fileio.py":
            continue
        for n, _, name in _calls(p):
            if kind == "write_text/write_bytes" and name in ("write_text", "write_bytes"):
                if (rel, name) not in NON_ATOMIC_OK:
                    bad.append(_where(p, n))
            elif kind == "open for writing" and name == "open" and len(n.args) > 1:
                mode = getattr(n.args[1], "value", "")
                if isinstance(mode, str) and any(c in mode for c in "wax+"):
                    bad.append(_where(p, n))
            elif kind == "savefig" and name == "savefig" and not isinstance(n.args[0], ast.Name):
                bad.append(_where(p, n))  # a path, not a file object from atomic_open
    assert not bad, f"non-atomic writes ({kind}): {bad}"
