"""``gpuprune prune`` and ``gpuprune inspect``, including bad input (exit 2, one line)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from gpuprune.cli.main import main
from gpuprune.models import create_model
from gpuprune.prune import read_pruned

WIDTH = ["--width", "0.25"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "vgg.pt"
    torch.save(create_model("vgg16", width=0.25).state_dict(), path)
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_then_inspect_with_plot(checkpoint, tmp_path, capsys):
    out = tmp_path / "pruned.safetensors"
    code, text, err = run(
        capsys, "prune", checkpoint, "--model", "vgg16", *WIDTH, "--method", "simd",
        "--target", "cpu-pocl", "--sparsity", "0.75", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert "features.3" in text and "written to" in text
    header, tensors = read_pruned(out)
    plan = header["plan"]
    assert plan["method"] == "simd" and plan["target"]["name"] == "cpu-pocl"
    assert header["model"]["name"] == "vgg16" and header["model"]["width"] == 0.25
    assert {lay["kernel"] for lay in plan["layers"]} == {"simd"}
    code, text, err = run(capsys, "inspect", out, "--plot", tmp_path / "heat.png")
    assert code == 0, err
    assert "features.40" in text and "4x1" in text
    png = (tmp_path / "heat.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    code, text, _ = run(capsys, "inspect", out, "--json")
    layers = json.loads(text)["layers"]
    assert all(abs(d["sparsity"] - 0.75) < 0.02 for d in layers.values())


def test_prune_json_with_options_and_safetensors_input(checkpoint, tmp_path, capsys):
    first = tmp_path / "a.safetensors"
    assert run(capsys, "prune", checkpoint, "--model", "vgg16", *WIDTH, "--method", "unstructured",
               "--sparsity", "0.3", "-o", first)[0] == 0  # fmt: skip
    out = tmp_path / "b.safetensors"
    code, text, err = run(
        capsys, "prune", first, "--model", "vgg16", *WIDTH, "--method", "nm", "-O", "n=1",
        "-O", "m=4", "--sparsity", "0.5", "--include-first-last", "--exclude", "classifier.*",
        "-o", out, "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(text)
    assert "features.0" in result["layers"] and "classifier.0" not in result["layers"]
    assert result["sparsity"] == pytest.approx(0.75, abs=0.01)  # 1:4 whatever was asked


@pytest.mark.parametrize(
    "args,match",
    [
        (["--method", "tile", "--target", "nvidia", "--sparsity", "1.0"], "outside"),
        (["--method", "tile", "--target", "nvidia", "--sparsity", "-0.5"], "outside"),
        (["--method", "blocky", "--sparsity", "0.5"], "unknown pruning method"),
        (
            [
                "--method",
                "simd",
                "--importance",
                "hessian",
                "--target",
                "nvidia",
                "--sparsity",
                "0.5",
            ],
            "unknown importance",
        ),  # fmt: skip
        (["--method", "simd", "--sparsity", "0.5"], "GPU target; none given"),
        (["--method", "tile", "--target", "nvidia", "--sparsity", "0.5", "--no-skip-small"],
         "smaller than one tile"),
        (["--method", "tile", "--target", "no-such-gpu", "--sparsity", "0.5"], "target"),
        (["--method", "unstructured", "--importance", "taylor", "--sparsity", "0.5"], "needs data"),
        (["--method", "unstructured", "--allocation", "magic", "--sparsity", "0.5"], "allocation"),
        (["--method", "nm", "-O", "n", "--sparsity", "0.5"], "KEY=VALUE"),
        (["--method", "nm", "-O", "q=3", "--sparsity", "0.5"], "bad option"),
        (["--method", "nm", "--sparsity", "0.5", "--permute"], "channel order is not searched"),
    ],
)
def test_bad_prune_input_is_one_line_exit_2(checkpoint, tmp_path, capsys, args, match):
    out = tmp_path / "never.safetensors"
    code, _, err = run(capsys, "prune", checkpoint, "--model", "vgg16", *WIDTH, *args, "-o", out)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_permute_reorders_channels_and_says_so(checkpoint, tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    code, text, err = run(capsys, "prune", checkpoint, "--model", "vgg16", *WIDTH, "--method",
                          "tile", "--target", "cpu-pocl", "--sparsity", "0.75", "--permute",
                          "-o", out)  # fmt: skip
    assert code == 0, err
    assert re.search(r"channels reordered on \d+ of \d+ links", text), text
    assert "channels left in order:" in text and "classifier.3: its output is the model's" in text
    code, text, err = run(capsys, "prune", checkpoint, "--model", "vgg16", *WIDTH, "--method",
                          "tile", "--target", "cpu-pocl", "--sparsity", "0.75", "--permute",
                          "-o", tmp_path / "q.safetensors", "--json")  # fmt: skip
    summary = json.loads(text)["permutation"]
    assert summary["swaps"] > 0
    assert sum(summary["kept_after"].values()) > sum(summary["kept_before"].values())


def test_checkpoint_for_another_model_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "resnet.pt"
    torch.save(create_model("resnet20").state_dict(), ckpt)
    out = tmp_path / "x.safetensors"
    code, _, err = run(capsys, "prune", ckpt, "--model", "vgg16", "--method", "unstructured",
                       "--sparsity", "0.5", "-o", out)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "does not match the model" in err and not out.exists()


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_bad_inspect_input_is_one_line_exit_2(tmp_path, capsys, content):
    path = tmp_path / "x.safetensors"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run(capsys, "inspect", path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_unreadable_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a pickle")
    code, _, err = run(capsys, "prune", bad, "--model", "vgg16", "--method", "unstructured",
                       "--sparsity", "0.5", "-o", tmp_path / "o.safetensors")  # fmt: skip
    assert code == 2 and "cannot read checkpoint" in err and len(err.strip().splitlines()) == 1


def test_taylor_and_sensitivity_from_a_data_set(tmp_path, capsys):
    ckpt = tmp_path / "resnet.pt"
    torch.save(create_model("resnet20", width=0.5).state_dict(), ckpt)
    out = tmp_path / "r.safetensors"
    code, text, err = run(
        capsys, "prune", ckpt, "--model", "resnet20", "--width", "0.5", "--method", "filter",
        "--importance", "taylor", "--allocation", "sensitivity", "--data", "synthetic",
        "--batches", "2", "--batch-size", "16", "--sparsity", "0.4", "-o", out, "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(text)
    assert result["importance"] == "taylor" and result["allocation"] == "sensitivity"
    assert result["sparsity"] == pytest.approx(0.4, abs=0.03)  # filter rows of 8..32-row layers


def test_explicit_allocation_file(checkpoint, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"features.3": 0.25, "features.40": 0.9}))
    out = tmp_path / "p.safetensors"
    code, text, err = run(capsys, "prune", checkpoint, "--model", "vgg16", *WIDTH, "--method",
                          "unstructured", "--allocation", plan, "--sparsity", "0.5", "-o", out,
                          "--json")  # fmt: skip
    assert code == 0, err
    layers = json.loads(text)["layers"]
    assert layers["features.3"]["sparsity"] == pytest.approx(0.25, abs=1e-3)
    assert layers["features.40"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert layers["features.7"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    plan.write_text(json.dumps({"features.0": 0.5}))  # excluded first layer
    code, _, err = run(capsys, "prune", checkpoint, "--model", "vgg16", *WIDTH, "--method",
                       "unstructured", "--allocation", plan, "--sparsity", "0.5",
                       "-o", out)  # fmt: skip
    assert code == 2 and "not pruned" in err


def test_obs_with_batch_norm_recalibration_from_a_data_set(tmp_path, capsys):
    ckpt = tmp_path / "resnet.pt"
    model = create_model("resnet20", width=0.5)
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "r.safetensors"
    code, text, err = run(
        capsys, "prune", ckpt, "--model", "resnet20", "--width", "0.5", "--method", "tile",
        "--target", "cpu-pocl", "--skip-small", "--importance", "obs", "--data", "synthetic",
        "--batches", "2", "--batch-size", "16", "--recalibrate-bn", "3", "--sparsity", "0.5",
        "-o", out, "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(text)
    assert result["importance"] == "obs" and result["sparsity"] == pytest.approx(0.5, abs=0.1)
    _, tensors = read_pruned(out)
    stats = [k for k in tensors if k.endswith("running_mean")]
    moved = [k for k in stats if not torch.equal(tensors[k], model.state_dict()[k])]
    assert stats and len(moved) == len(stats)  # every batch norm re-estimated


def test_obs_without_data_is_one_line_exit_2(checkpoint, tmp_path, capsys):
    code, _, err = run(capsys, "prune", checkpoint, "--model", "vgg16", *WIDTH, "--method", "tile",
                       "--target", "cpu-pocl", "--importance", "obs", "--sparsity", "0.5",
                       "-o", tmp_path / "x.safetensors")  # fmt: skip
    assert code == 2 and "--data" in err and len(err.strip().splitlines()) == 1
