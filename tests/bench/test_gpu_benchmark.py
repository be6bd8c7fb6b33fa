"""benchmarks/gpu/run.py --dry-run: the whole GPU benchmark's logic on the CPU (Triton
interpreter, tiny shapes), writing a result file in the benchmarks/results schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuprune.bench import results
from script_helpers import load_script

pytest.importorskip("triton")
pytestmark = pytest.mark.triton

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "run.py"


def run_main(monkeypatch, argv):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # run.py sets it too; this undoes it after
    monkeypatch.syspath_prepend(str(RUN.parent))
    return load_script("benchmarks/gpu/run.py", "gpu_bench_run").main(argv)


def test_spent_budget_lists_everything_as_skipped(monkeypatch, tmp_path):
    out = tmp_path / "gpu.json"
    assert run_main(monkeypatch, ["--dry-run", "--out", str(out), "--budget-s", "0"]) == 0
    meta, records = results.load(out)
    assert meta["dry_run"] and records == []
    assert meta["skipped"] and all("time budget" in s for s in meta["skipped"])
    assert any(s.startswith("e2e resnet50") for s in meta["skipped"])


@pytest.mark.slow
def test_dry_run_writes_every_kind_of_record(monkeypatch, tmp_path):
    out = tmp_path / "gpu.json"
    argv = ["--dry-run", "--out", str(out), "--models", "vgg16-cifar", "--batches", "2",
            "--sparsities", "0.75", "--dtypes", "float16"]  # fmt: skip
    assert run_main(monkeypatch, argv) == 0
    meta, records = results.load(out)
    assert meta["dry_run"] and meta["all_outputs_match"] is True
    kinds = {(r["kind"], r.get("method"), r.get("backend")) for r in records}
    for want in [("gemm", "dense", "cudnn"), ("gemm", "dense", "triton"),
                 ("gemm", "tile", "triton"), ("gemm", "simd", "triton"),
                 ("e2e", "tile", "triton"), ("e2e", "simd", "triton")]:  # fmt: skip
        assert want in kinds, want
    layouts = {r["layout"] for r in records if r["kind"] == "gemm"}
    assert layouts == {"nchw", "channels_last"}
    # the CUDA-only baselines say why they are missing instead of vanishing
    missing = [r for r in records if r["kind"] == "skipped"]
    assert missing and "CUDA" in missing[0]["runners"]["torch-bsr"]
    # the summary the README table is made from reads these records
    assert results.gemm_summary(records)
