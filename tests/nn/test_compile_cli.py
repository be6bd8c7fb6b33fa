"""`gpuprune compile` on a real pruned-model file."""

from __future__ import annotations

import json

import pytest
import torch

import gpuprune.prune as gp
from gpuprune.cli.main import main
from gpuprune.models import create_model


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = create_model("tiny-cnn")
    result = gp.prune(
        model, method="simd", sparsity=0.6, target="cpu-pocl", exclude_first_last=False
    )
    path = str(tmp_path_factory.mktemp("pruned") / "tiny.safetensors")
    gp.save_pruned(path, model, result, model_name="tiny-cnn", extra={"in_channels": 3})
    return path


@pytest.mark.opencl
def test_compile_checks_equivalence_and_times_layers(pruned_file, capsys):
    assert main(["compile", pruned_file, "--backend", "opencl", "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "opencl" and out["target"] == "cpu-pocl"
    assert out["max_rel_error"] <= 1e-4
    assert {r["layer"] for r in out["layers"]} == {"features.0", "features.4", "features.8", "fc"}
    assert all(r["variant"] == "simd" and r["skip_ms"] > 0 for r in out["layers"])


def test_compile_for_another_target_as_a_table(pruned_file, capsys):
    assert main(["compile", pruned_file, "--backend", "reference", "--target", "nvidia",
                 "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "equals the masked model" in text and "16x1" in text  # nvidia's SIMD block


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["compile", str(tmp_path / "x"), "--backend", "vulkan"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err


def test_compile_cli_runs_attention_and_transposed_convs(tmp_path, capsys):
    from cli_models import attention_decoder
    from small_target import SMALL as small
    torch.manual_seed(0)
    model = attention_decoder()
    gp.prune(model, "tile", 0.5, target=small, example_inputs=torch.randn(1, 3, 16, 16))
    path = tmp_path / "attn.safetensors"
    gp.save_pruned(path, model)
    assert main(["compile", str(path), "--backend", "reference", "--model",
                 "cli_models:attention_decoder", "--image-size", "16", "--repeats", "1",
                 "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["max_rel_error"] <= 1e-4
    rows = {r["layer"]: r for r in out["layers"]}
    assert set(rows) == {"attn.in_proj_weight", "attn.out_proj", "same"}
    assert rows["attn.in_proj_weight"]["gemm"] == [96, 32] and rows["same"]["skip_ms"] > 0
    dense = {d["name"]: d["reason"] for d in out["left_dense"]}
    assert set(dense) == {"patch", "up", "head"} and "stride (2, 2)" in dense["up"]
