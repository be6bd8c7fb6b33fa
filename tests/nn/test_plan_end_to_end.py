"""The pruning plan from pruner to kernel: prune with every method, save, load in a fresh
process, compile with no ``methods=``; each layer gets its method's kernel and the outputs equal
the masked model. The same through the CLI (``gpuprune prune`` then ``gpuprune compile``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from small_target import SMALL

import gpuprune
from gpuprune.cli.main import main
from gpuprune.models import ModelSpec

pytestmark = pytest.mark.slow

BUILTIN = ("tile", "simd", "simd-balanced", "unstructured", "filter", "ssl", "balanced",
           "channel-perf", "nm")  # fmt: skip
SIMD_KERNEL = {"simd", "simd-balanced"}  # what the kernels promise: these skip SIMD vectors
SPEC = ModelSpec("tiny-cnn", num_classes=16, in_channels=3, width=4.0)  # every GEMM >= 16x16
SRC = str(Path(gpuprune.__file__).resolve().parents[1])

# Runs in a fresh interpreter: nothing but the files is shared with the pruning process.
CHECK = textwrap.dedent("""
    import json, sys, warnings
    import torch
    import gpuprune

    out = {}
    for method, path in json.loads(sys.argv[1]).items():
        model, plan, info = gpuprune.load(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled = gpuprune.compile(model, backend="reference")
        report = compiled.gpuprune_compile
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            err = float((compiled(x) - model(x)).abs().max() / model(x).abs().max())
        out[method] = {
            "planned": {lay.name: lay.kernel for lay in plan},
            "compiled": {lay.name: lay.variant for lay in report.layers},
            "target": report.target, "notes": list(report.notes),
            "warned": [str(w.message) for w in caught], "err": err,
        }
    print(json.dumps(out))
""")


def _pruned_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for method in BUILTIN:
        torch.manual_seed(0)
        model = SPEC.build()
        gpuprune.prune(model, method=method, sparsity=0.6, target=SMALL,
                       exclude_first_last=False, input_size=(3, 16, 16))  # fmt: skip
        path = tmp_path / f"{method}.safetensors"
        gpuprune.save_pruned(path, model, model_name=SPEC)  # the plan rides on the model
        files[method] = str(path)
    return files


def test_every_method_compiles_from_the_plan_in_a_fresh_process(tmp_path):
    files = _pruned_files(tmp_path)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps(files)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for method in BUILTIN:
        r = got[method]
        want = "simd" if method in SIMD_KERNEL else "tile"
        assert set(r["planned"].values()) == {want}, method
        assert r["target"] == SMALL.name, method  # the plan's target, not a detected device
        assert r["err"] <= 1e-5, (method, r["err"])
        for layer in r["planned"]:  # every planned layer: compiled with its kernel, or named
            if layer in r["compiled"]:
                assert r["compiled"][layer] == want, (method, layer)
            else:
                named = [n for n in r["notes"] if n.startswith(f"layer {layer} left dense")]
                assert named and named[0] in r["warned"], (method, layer, r["notes"])
        if method in ("tile", "simd", "simd-balanced"):  # their zeros are whole kernel blocks
            assert set(r["compiled"]) == set(r["planned"]), (method, r["notes"])


def test_prune_then_compile_through_the_cli(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(SPEC.build().state_dict(), ckpt)
    target = tmp_path / "small.toml"
    SMALL.save(target)
    for method in ("simd", "tile", "unstructured"):
        out = tmp_path / f"{method}.safetensors"
        assert main(["prune", str(ckpt), "--model", "tiny-cnn", "--width", "4", "--num-classes",
                     "16", "--method", method, "--sparsity", "0.6", "--target", str(target),
                     "--include-first-last", "-o", str(out), "--json"]) == 0  # fmt: skip
        capsys.readouterr()
        assert main(["compile", str(out), "--backend", "reference", "--image-size", "16",
                     "--repeats", "1", "--json"]) == 0  # fmt: skip
        res = json.loads(capsys.readouterr().out)
        assert res["method"] == method and res["target"] == SMALL.name
        assert res["max_rel_error"] <= 1e-4
        want = "simd" if method == "simd" else "tile"
        assert all(r["variant"] == want for r in res["layers"])
        if method == "unstructured":  # nothing to skip: named, never silently dense
            assert not res["layers"] and any("left dense" in n for n in res["notes"])
        else:
            assert len(res["layers"]) == 4 and not res["left_dense"]


def test_a_model_with_nothing_to_skip_is_named():
    model = SPEC.build().eval()
    with pytest.warns(UserWarning, match="no layer compiled"):
        out = gpuprune.compile(model, target=SMALL, backend="reference")
    assert not out.gpuprune_compile.layers
    assert any("no layer compiled" in n for n in out.gpuprune_compile.notes)
