"""`gpuprune prune --allocation latency --latency-budget` reaches the latency allocator."""

from __future__ import annotations

import json

import torch

from gpuprune.cli.main import main
from gpuprune.models import create_model


def test_latency_budget_from_the_cli(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    torch.save(create_model("vgg16", width=0.25).state_dict(), ckpt)
    args = ["prune", str(ckpt), "--model", "vgg16", "--width", "0.25", "--method", "tile",
            "--sparsity", "0.5", "--target", "cpu-pocl", "--skip-small", "--json"]  # fmt: skip
    code = main([*args, "--allocation", "latency", "--latency-budget", "0.5",
                 "-o", str(tmp_path / "lat.safetensors")])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["allocation"] == "latency"
    code = main([*args, "-o", str(tmp_path / "uni.safetensors")])
    uniform = json.loads(capsys.readouterr().out)
    # the same budget spent where time is: per-layer sparsities differ from uniform's
    lat = {n: v["sparsity"] for n, v in out["layers"].items()}
    uni = {n: v["sparsity"] for n, v in uniform["layers"].items()}
    assert lat != uni


def test_latency_budget_needs_latency_allocation(tmp_path, capsys):
    code = main(["prune", "x.pt", "--model", "vgg16", "--method", "tile", "--sparsity", "0.5",
                 "--latency-budget", "0.4", "-o", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "--allocation latency" in capsys.readouterr().err
