"""Per-layer tilings (from `gpuprune codesign`) flow into the pruned file and into compile."""

from __future__ import annotations

import json

import torch

from gpuprune.arch import get_target
from gpuprune.cli.main import main
from gpuprune.models import create_model


def test_prune_with_layer_targets_then_compile(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    torch.save(create_model("vgg16", width=0.25).state_dict(), ckpt)
    wide = get_target("cpu-pocl").replace(name="wide", mwg=64, nwg=64, mdimc=4, ndimc=4)
    tilings = tmp_path / "codesign.json"
    tilings.write_text(json.dumps({"layer_targets": {"features.24": wide.to_dict()}}))
    pruned = tmp_path / "p.safetensors"
    code = main(["prune", str(ckpt), "--model", "vgg16", "--width", "0.25", "--method", "tile",
                 "--sparsity", "0.75", "--target", "cpu-pocl", "--skip-small", "--json",
                 "--layer-targets", str(tilings), "-o", str(pruned)])  # fmt: skip
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert code == 0
    assert layers["features.24"]["block"] == [64, 32]  # pruned in the co-designed tile
    assert layers["features.27"]["block"] == [32, 32]  # the rest in the preset's
    code = main(["compile", str(pruned), "--backend", "reference", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["max_rel_error"] < 1e-4
    by_layer = {r["layer"]: r for r in out["layers"]}
    assert by_layer["features.24"]["target"] == "wide"
    assert by_layer["features.24"]["block"] == [64, 32]
    assert by_layer["features.27"]["target"] == "cpu-pocl"


def test_bad_layer_targets_file(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    code = main(["prune", "m.pt", "--model", "vgg16", "--method", "tile", "--sparsity", "0.5",
                 "--target", "cpu-pocl", "--layer-targets", str(bad), "-o", str(tmp_path / "o")])
    assert code == 2
    assert "holds no {layer: target} mapping" in capsys.readouterr().err
