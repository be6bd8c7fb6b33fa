"""``gpuprune bench --zoo``: one-line errors without the model zoo; the quick run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gpuprune.bench import zoo
from gpuprune.cli.main import main

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _refuse(exc: Exception):
    def import_module(name, *args, **kwargs):
        raise exc

    return import_module


@pytest.mark.parametrize(
    "exc,says",
    [(ImportError("No module named 'torchvision'"), "pip install torchvision timm"),
     (RuntimeError("operator torchvision::nms does not exist"), "benchmarks/zoo.py")],
)  # fmt: skip
def test_zoo_without_packages_is_one_line(monkeypatch, capsys, tmp_path, exc, says):
    monkeypatch.setattr(zoo.importlib, "import_module", _refuse(exc))
    assert main(["bench", "--zoo", "--quick", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "Traceback" not in err and len(err.splitlines()) <= 2


def test_zoo_rejects_unknown_model_and_runtime(capsys, tmp_path):
    assert main(["bench", "--zoo", "--zoo-models", "lenet", "-o", str(tmp_path)]) == 2
    assert "unknown zoo model 'lenet'" in capsys.readouterr().err
    assert main(["bench", "--zoo", "--runtimes", "tvm", "-o", str(tmp_path)]) == 2
    assert "unknown dense runtime 'tvm'" in capsys.readouterr().err


def test_markdown_table_has_a_row_per_model_and_batch():
    rec = {"kind": "zoo", "model": "m", "batch": 1, "median_ms": 2.0, "speedup_vs_eager": 1.5,
           "speedup_vs_best_dense": 1.2}  # fmt: skip
    table = zoo.markdown_table([
        {**rec, "variant": "dense", "runtime": "eager", "median_ms": 3.0},
        {**rec, "variant": "tile", "runtime": "gpuprune-cpu"},
        {"kind": "note", "runtime": "torch-compile", "why": "x"},
    ])  # fmt: skip
    assert "| m | 1 | 3.0 | 2.0 | 1.50x | 1.20x |" in table


@pytest.mark.slow
def test_zoo_quick_runs_end_to_end(tmp_path, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from zoo_models import zoo_missing  # this machine's torchvision workaround (test only)
    finally:
        sys.path.remove(str(BENCHMARKS))
    missing = zoo_missing()
    if missing:
        pytest.skip(missing)
    assert main(["bench", "--zoo", "--quick", "-o", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("zoo-*-quick.json")
    records = json.loads(path.read_text())["records"]
    rows = {(r["variant"], r["runtime"]): r for r in records if r["kind"] == "zoo"}
    assert set(rows) == {("dense", "eager"), ("tile", "gpuprune-cpu"), ("simd", "gpuprune-cpu")}
    for rec in rows.values():
        assert rec["median_ms"] > 0 and rec["max_rel_err"] < 1e-3
        assert rec["speedup_vs_eager"] > 0 and rec["best_dense"] == "eager"
    assert rows[("tile", "gpuprune-cpu")]["ideal_speedup"] > 1.5
    assert "resnet18" in capsys.readouterr().out
