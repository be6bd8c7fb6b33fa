"""The benchmark harness: records, speedups, files, table, plots and the CLI on a tiny grid."""

from __future__ import annotations

import json

import pytest
import torch

from gpuprune.arch import get_target
from gpuprune.bench import results
from gpuprune.bench.config import QUICK, BenchConfig
from gpuprune.bench.gemm_bench import plan, run_gemm
from gpuprune.bench.runners import RUNNERS
from gpuprune.bench.timing import measure
from gpuprune.bench.workloads import masked_weight, vgg16_gemms
from gpuprune.cli.main import main

TINY = BenchConfig(
    batches=(1,),
    sparsities=(0.75,),
    methods=("tile", "unstructured"),
    layers=("conv4",),
    runners=("torch-dense", "torch-csr", "torch-bsr", "cpu-dense", "cpu-skip"),
    warmup=0,
    repeats=2,
    budget_s=0.1,
)
REQUIRED = {
    "method",
    "sparsity",
    "backend",
    "layer",
    "batch",
    "median_ms",
    "speedup",
    "speedup_vs_torch_dense",
    "efficiency",
    "packed_bytes",
    "dense_bytes",
}


def test_vgg16_gemm_shapes():
    shapes = vgg16_gemms(batch=16)
    assert len(shapes) == 13
    assert (shapes[0].m, shapes[0].k, shapes[0].n) == (64, 27, 32 * 32 * 16)
    assert (shapes[-1].m, shapes[-1].k, shapes[-1].n) == (512, 4608, 2 * 2 * 16)


@pytest.mark.parametrize("method", ["tile", "simd", "unstructured", "nm"])
def test_masked_weights_hit_the_sparsity(method):
    shape = vgg16_gemms(batch=1)[5]
    w = masked_weight(shape, method, 0.75, get_target("cpu-pocl"))
    assert abs(float((w == 0).float().mean()) - 0.75) < 0.02


def test_timing_reports_medians():
    t = measure(lambda: torch.ones(10).sum(), warmup=1, repeats=5, budget_s=1.0)
    assert t.repeats == 5 and t.min_ms <= t.median_ms and t.p25_ms <= t.p75_ms


def test_plan_measures_dense_first_per_layer():
    cells = list(plan(QUICK))
    assert cells[0][2] == "dense"
    assert len(cells) == len(QUICK.layers) * (1 + len(QUICK.methods) * len(QUICK.sparsities))


def test_run_gemm_records_and_speedups(tmp_path):
    records = run_gemm(TINY)
    gemm = [r for r in records if r.get("kind") == "gemm"]
    assert {r["backend"] for r in gemm} >= {"torch-dense", "torch-csr", "torch-bsr", "cpu-skip"}
    for r in gemm:
        assert set(r) >= REQUIRED, set(REQUIRED) - set(r)
        assert r["max_rel_err"] < 1e-4, "every runner computes the masked product"
        assert r["speedup"] > 0
    csr = next(r for r in gemm if r["backend"] == "torch-csr")
    dense = next(r for r in gemm if r["backend"] == "torch-dense")
    assert csr["speedup"] == pytest.approx(dense["median_ms"] / csr["median_ms"])
    tile = next(r for r in gemm if r["backend"] == "cpu-skip" and r["method"] == "tile")
    assert tile["packed_bytes"] < tile["dense_bytes"]
    assert tile["ideal_speedup"] == pytest.approx(1 / tile["density"])

    path = tmp_path / "r.json"
    results.save(path, {"environment": {"cpu": "x"}}, records)
    meta, back = results.load(path)
    assert back == json.loads(json.dumps(records))
    table = results.markdown_table(meta, back)
    assert "| GEMM | tile | 0.75 | cpu-skip |" in table
    pngs = results.plot(back, tmp_path / "plots")
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)


def test_readme_table_is_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.README_START}\nold\n{results.README_END}\nrest\n")
    assert results.update_readme(readme, "| new |\n")
    assert (
        readme.read_text()
        == f"intro\n{results.README_START}\n| new |\n{results.README_END}\nrest\n"
    )
    (tmp_path / "plain.md").write_text("no markers")
    assert not results.update_readme(tmp_path / "plain.md", "x")


def test_bad_results_file_is_a_user_error(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    from gpuprune.errors import UserError

    with pytest.raises(UserError, match="cannot read benchmark results"):
        results.load(tmp_path / "bad.json")


def test_cli_bench_tiny(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--batches",
            "1",
            "--sparsities",
            "0.75",
            "--methods",
            "tile",
            "--layers",
            "conv4",
            "--backends",
            "torch-dense,cpu-dense,cpu-skip",
            "--no-e2e",
            "-o",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    _, recs = results.load(files[0])
    assert any(r.get("backend") == "cpu-skip" for r in recs)
    assert "cpu-skip" in out


@pytest.mark.parametrize(
    "args, err",
    [
        (["--sparsities", "1.2"], "sparsities must be in [0, 1)"),
        (["--batches", "x"], "not a comma-separated list"),
        (["--methods", "bogus"], "unknown pruning method 'bogus'"),
        (["--backends", "nope"], "unknown benchmark backend 'nope'"),
        (["--target", "nvidai"], "unknown target"),
    ],
)
def test_cli_bench_bad_input(tmp_path, capsys, args, err):
    code = main(["bench", *args, "-o", str(tmp_path)])
    assert code == 2
    assert err in capsys.readouterr().err


def test_every_runner_names_its_baseline():
    for name in RUNNERS:
        assert RUNNERS.get(name).baseline in RUNNERS


def test_end_to_end_records_against_dense_and_torch():
    from gpuprune.bench.e2e_bench import run_e2e

    cfg = TINY.with_(
        e2e_batches=(1,),
        e2e_methods=("tile",),
        e2e_sparsities=(0.75,),
        e2e_backends=("torch", "reference"),
        e2e_runtimes=(),
        e2e_models=("vgg16",),
        e2e_width=0.25,
    )
    recs = [r for r in run_e2e(cfg) if r.get("kind") == "e2e"]
    by = {(r["backend"], r["method"]): r for r in recs}
    assert set(by) == {
        ("torch-dense", "dense"),
        ("reference-e2e", "dense"),
        ("reference-e2e", "tile"),
    }
    pruned = by[("reference-e2e", "tile")]
    assert pruned["max_rel_err"] < 1e-4, "the compiled model computes what the pruned model does"
    assert 2.0 < pruned["ideal_speedup"] < 4.0  # first and last layers stay dense
    assert pruned["speedup"] is not None and pruned["speedup_vs_torch_dense"] is not None


def _rec(backend, ms, method="dense", model="m", batch=1):
    return {
        "kind": "e2e", "model": model, "batch": batch, "method": method, "sparsity": 0.0,
        "backend": backend, "baseline": backend, "median_ms": ms, "ideal_speedup": 1.0,
    }  # fmt: skip


def test_best_dense_is_the_fastest_unpruned_runtime_per_model_and_batch():
    from gpuprune.bench.dense_runtimes import best_dense, dense_backends
    from gpuprune.bench.e2e_bench import add_speedups

    runtimes = ("openvino", "onnxruntime")
    candidates = dense_backends(runtimes)
    assert candidates == {"torch-dense", "openvino-dense", "onnxruntime-dense"}
    recs = [
        _rec("torch-dense", 10.0),
        _rec("openvino-dense", 4.0),
        _rec("onnxruntime-dense", 5.0),
        _rec("cpu-e2e", 3.0),  # gpuprune's own dense kernel is not a runtime a user picks
        _rec("openvino-masked", 2.0, method="tile"),  # pruned models never count as dense
        _rec("torch-dense", 7.0, batch=16),
        _rec("onnxruntime-dense", 8.0, batch=16),
    ]
    best = best_dense(recs, candidates)
    assert best == {("m", 1): ("openvino-dense", 4.0), ("m", 16): ("torch-dense", 7.0)}

    tile = {**_rec("cpu-e2e", 2.0, method="tile"), "baseline": "cpu-e2e"}
    recs.append(tile)
    add_speedups(recs, runtimes)
    assert tile["best_dense_runtime"] == "openvino-dense"
    assert tile["speedup_vs_best_dense"] == pytest.approx(2.0)
    assert tile["speedup_vs_torch_dense"] == pytest.approx(5.0)
    assert tile["speedup"] == pytest.approx(1.5)


def test_best_dense_without_runtimes_falls_back_to_eager():
    from gpuprune.bench.dense_runtimes import best_dense, dense_backends

    recs = [_rec("torch-dense", 10.0), _rec("openvino-dense", 1.0)]
    assert best_dense(recs, dense_backends(())) == {("m", 1): ("torch-dense", 10.0)}


def test_quick_bench_times_the_deployed_runtimes():
    assert set(QUICK.e2e_runtimes) == {"openvino", "onnxruntime", "torch-compile"}
    assert "torch" in QUICK.e2e_backends and "cpu" in QUICK.e2e_backends


@pytest.mark.slow
def test_cli_bench_records_runtime_baselines(tmp_path, capsys):
    """What `bench --quick` does end to end, on a tiny VGG16: runtime rows and the best dense."""
    threads = torch.get_num_threads()
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    args = ["bench", "--batches", "1", "--sparsities", "0.75", "--methods", "tile", "--layers",
            "conv4", "--backends", "torch-dense", "--e2e-models", "vgg16", "--e2e-batches", "1",
            "--e2e-width", "0.25", "--e2e-backends", "torch,cpu", "--e2e-runtimes",
            "openvino,onnxruntime", "--repeats", "3", "--threads", "1",
            "-o", str(tmp_path)]  # fmt: skip
    try:
        code = main(args)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0, out
    _, recs = results.load(next(tmp_path.glob("*.json")))
    e2e = {(r["backend"], r["method"]): r for r in recs if r.get("kind") == "e2e"}
    assert set(e2e) >= {
        ("torch-dense", "dense"), ("openvino-dense", "dense"), ("onnxruntime-dense", "dense"),
        ("cpu-e2e", "dense"), ("cpu-e2e", "tile"), ("openvino-masked", "tile"),
        ("onnxruntime-masked", "tile"),
    }  # fmt: skip
    for r in e2e.values():
        assert r["max_rel_err"] < 1e-4, r["backend"]
        assert r["best_dense_runtime"] in {"torch-dense", "openvino-dense", "onnxruntime-dense"}
        assert r["speedup_vs_best_dense"] > 0
    assert e2e[("openvino-masked", "tile")]["baseline"] == "openvino-dense"
    assert "vs fastest dense" in out and "openvino-dense" in out


def test_cli_bench_refuses_unknown_e2e_names(tmp_path, capsys):
    assert main(["bench", "--e2e-models", "alexnet", "-o", str(tmp_path)]) == 2
    assert "unknown end-to-end model 'alexnet'" in capsys.readouterr().err
    assert main(["bench", "--e2e-runtimes", "tensorrt", "-o", str(tmp_path)]) == 2
    assert "unknown dense runtime 'tensorrt'" in capsys.readouterr().err


@pytest.mark.slow
def test_torch_compile_runtime_matches_eager():
    from gpuprune.bench.dense_runtimes import DENSE_RUNTIMES
    from gpuprune.models import create_model

    model = create_model("tiny-cnn").eval()
    x = torch.randn(2, 3, 32, 32)
    run = DENSE_RUNTIMES.get("torch-compile")(model, x)
    with torch.no_grad():
        assert torch.allclose(run(), model(x), atol=1e-5)


def test_clblast_is_unavailable_where_the_opencl_driver_cannot_build(monkeypatch):
    """A driver that cannot compile (PoCL on a CPU newer than its LLVM) makes the CLBlast
    baseline a 'not measured' line, not a crash of the whole run."""
    pytest.importorskip("pyclblast")
    from gpuprune.bench.runners import RUNNERS, Unavailable
    from gpuprune.errors import DeviceNotFoundError
    from gpuprune.kernels.opencl import context

    def unusable():
        raise DeviceNotFoundError("the OpenCL driver of X cannot build even a trivial kernel",
                                  "use backend='cpu'")  # fmt: skip

    monkeypatch.setattr(context, "get_usable_device", unusable)
    w, x = torch.randn(8, 16), torch.randn(4, 16)
    with pytest.raises(Unavailable, match="cannot build"):
        RUNNERS.get("clblast").make(w, x, None, "dense")
