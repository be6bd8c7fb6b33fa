"""Bad input exits 2 with one line naming the flag or key; help, Ctrl-C, debug and plots behave."""

from __future__ import annotations

import errno
import gzip
import json
import os

import numpy as np
import pytest
import torch
from reliability_helpers import TINY_ARGS, copy_run, one_line_error, tiny_model, write_config
from safetensors.torch import save

PRUNE = ("--sparsity", "0.5", "--target", "cpu-pocl", "--skip-small")


def _prune(cli, ckpt, out, *more):
    return cli("prune", ckpt, *TINY_ARGS, *PRUNE, "-o", out, *more)


# --- weights no trained model has -----------------------------------------------------------


@pytest.mark.parametrize("damage", ["negative variance", "huge weight"])
def test_bad_weights_in_a_checkpoint(tmp_path, cli, damage):
    state = {k: v.contiguous() for k, v in tiny_model().state_dict().items()}
    if damage == "negative variance":
        key = next(k for k in state if k.endswith("running_var"))
        state[key][0] = -1.0
    else:
        key = "features.0.weight"
        state[key].view(-1)[0] = 1.47e37
    ckpt = tmp_path / "bad.pt"
    torch.save(state, ckpt)
    line = one_line_error(_prune(cli, ckpt, tmp_path / "o.safetensors"))
    assert key in line


@pytest.mark.parametrize("damage", ["negative variance", "huge weight"])
def test_bad_weights_in_a_pruned_file_with_valid_checksums(files, tmp_path, cli, damage):
    from gpuprune.prune.files import checksum, header_digest, read_pruned

    header, tensors = read_pruned(files["pruned"])
    if damage == "negative variance":
        key = next(k for k in tensors if k.endswith("running_var"))
        tensors[key][0] = -1.0
    else:
        key = next(k for k in tensors if k.endswith("weight") and not k.startswith("mask:"))
        tensors[key].view(-1)[0] = 1.47e37
    header["sha256"] = checksum(tensors)
    header["header_sha256"] = header_digest(header)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(save(tensors, metadata={"gpuprune": json.dumps(header)}))
    line = one_line_error(cli("compile", bad, "--backend", "reference"))
    assert key in line


# --- configs with absurd values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "change", "named"),
    [
        ("data", {"options": {"train": 128, "test": 32, "size": -8, "channels": 1}},
         "data.options.size"),
        ("data", {"options": {"train": 128, "test": 32, "size": "abc", "channels": 1}},
         "data.options.size"),
        ("data", {"options": {"train": 10**12, "test": 32, "size": 8, "channels": 1}},
         "data.options.train"),
        ("model", {"width": float("inf")}, "model.width"),
        ("model", {"width": 1e9}, "model.width"),
        (None, {"seed": 2**70}, "seed"),
        ("dense", {"batch_size": 100_000_000}, "dense.batch_size"),
    ],
)
def test_absurd_config_values(tiny_config, tmp_path, cli, section, change, named):
    (tiny_config.setdefault(section, {}) if section else tiny_config).update(change)
    run = tmp_path / "run"
    line = one_line_error(cli("run", write_config(tmp_path, tiny_config), "-o", run))
    assert named in line
    assert not (run / "dense").exists()


# --- data files ---------------------------------------------------------------------------------

FMNIST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
          "t10k-labels-idx1-ubyte")  # fmt: skip


def _idx(shape: tuple[int, ...], fill: int = 0) -> bytes:
    head = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    return head + np.full(int(np.prod(shape)), fill, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("damage", ["label 200", "images 20x20", "labels 2-D"])
def test_fashion_mnist_with_bad_labels_or_shapes(tmp_path, cli, damage):
    root = tmp_path / "fm"
    root.mkdir()
    shapes = {"train-images-idx3-ubyte": (20, 28, 28), "train-labels-idx1-ubyte": (20,),
              "t10k-images-idx3-ubyte": (10, 28, 28), "t10k-labels-idx1-ubyte": (10,)}
    fill = dict.fromkeys(shapes, 0)
    if damage == "label 200":
        fill["t10k-labels-idx1-ubyte"] = 200
    elif damage == "images 20x20":
        shapes["t10k-images-idx3-ubyte"] = (10, 20, 20)
    else:
        shapes["t10k-labels-idx1-ubyte"] = (10, 2)
    for stem in FMNIST:
        (root / (stem + ".gz")).write_bytes(gzip.compress(_idx(shapes[stem], fill[stem])))
    line = one_line_error(cli("train", "--model", "tiny-cnn", "--data", "fashion-mnist",
                              "--data-root", root, "-o", tmp_path / "t"))  # fmt: skip
    assert "t10k" in line


# --- malformed run files in report --------------------------------------------------------------


@pytest.mark.parametrize("damage", ["summary is a list", "summary without dense",
                                    "cell without method", "config.yaml not YAML",
                                    "config.yaml a list"])  # fmt: skip
def test_report_of_malformed_run_files(finished_run, tmp_path, cli, damage):
    run = copy_run(finished_run, tmp_path)
    summary = run / "summary.json"
    if damage == "summary is a list":
        summary.write_text("[1, 2]")
    elif damage == "summary without dense":
        data = json.loads(summary.read_text())
        del data["dense"]
        summary.write_text(json.dumps(data))
    elif damage == "cell without method":
        data = json.loads(summary.read_text())
        del data["cells"][0]["method"]
        summary.write_text(json.dumps(data))
    else:
        summary.unlink()
        text = "name: [unclosed\n" if damage == "config.yaml not YAML" else "- a\n- b\n"
        (run / "config.yaml").write_text(text)
    line = one_line_error(cli("report", run))
    assert str(run) in line


# --- paths --------------------------------------------------------------------------------------


def test_245_character_file_name_works(files, tmp_path, cli):
    out = tmp_path / ("m" * 233 + ".safetensors")
    assert len(out.name) == 245
    assert _prune(cli, files["pt"], out).code == 0
    assert out.is_file()


def test_parent_path_is_a_file(files, tmp_path, cli):
    parent = tmp_path / "afile"
    parent.write_text("x")
    line = one_line_error(_prune(cli, files["pt"], parent / "o.safetensors"))
    assert "afile" in line and "not a folder" in line
    assert parent.read_text() == "x"


def test_run_folder_whose_parent_is_a_file(tiny_config, tmp_path, cli):
    parent = tmp_path / "afile"
    parent.write_text("x")
    line = one_line_error(cli("run", write_config(tmp_path, tiny_config), "-o", parent / "run"))
    assert "afile" in line


def test_eperm_is_exit_2(files, tmp_path, cli, monkeypatch):
    import gpuprune.fileio as fileio

    def denied(src, dst):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(dst))

    monkeypatch.setattr(fileio.os, "replace", denied)
    line = one_line_error(_prune(cli, files["pt"], tmp_path / "o.safetensors"))
    assert "not permitted" in line and "permissions" in line


# --- sizes that would allocate gigabytes --------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [("compile", "--batch", "100000000"), ("compile", "--image-size", "1000000"),
     ("prune", "--width", "1e9"), ("prune", "--num-classes", "-1"),
     ("codesign", "--width", "1e9"), ("codesign", "--candidates", "100000000")],
)
def test_allocation_sized_inputs_are_refused(files, tmp_path, cli, command, flag, value):
    if command == "compile":
        args = ["compile", files["pruned"], "--backend", "reference"]
    elif command == "prune":
        args = ["prune", files["pt"], "--model", "tiny-cnn", "--in-channels", "1", *PRUNE,
                "-o", tmp_path / "o.safetensors"]  # fmt: skip
    else:
        args = ["codesign", "--model", "tiny-cnn", "--backend", "reference"]
    line = one_line_error(cli(*args, flag, value))
    assert flag in line


def test_target_with_a_huge_tile_is_refused(tmp_path, cli):
    from gpuprune.arch import get_target

    fields = get_target("cpu-pocl").to_dict()
    fields.update(name="huge", mwg=2**20, local_mem_bytes=2**40)
    path = tmp_path / "huge.yaml"
    import yaml

    path.write_text(yaml.safe_dump(fields))
    line = one_line_error(cli("targets", "show", path))
    assert "mwg" in line or "local_mem_bytes" in line


# --- the CLI's own behaviour --------------------------------------------------------------------


def test_ctrl_c_message(files, tmp_path, cli, monkeypatch):
    import gpuprune.cli.prune as prune_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_cli, "read_state_dict", interrupted)
    res = _prune(cli, files["pt"], tmp_path / "o.safetensors")
    assert res.code == 130
    assert "interrupted; finished results are kept, rerun to resume" in res.err
    assert "aborted" not in res.err.lower()


def test_bare_gpuprune_prints_help(cli):
    res = cli()
    assert res.code == 0
    assert "Usage: gpuprune" in res.out and "Commands:" in res.out and "prune" in res.out
    assert "error" not in res.err


@pytest.mark.parametrize("value", ["0", "false", "no"])
def test_gpuprune_debug_off_values_show_no_traceback(files, cli, monkeypatch, value):
    import gpuprune.cli.prune as prune_cli

    monkeypatch.setenv("GPUPRUNE_DEBUG", value)

    def broken(*args: object) -> None:
        raise RuntimeError("unexpected state")

    monkeypatch.setattr(prune_cli, "info_from_header", broken)
    line = one_line_error(cli("inspect", files["pruned"]), code=1)
    assert "RuntimeError" in line


def test_plot_svg_writes_svg(files, tmp_path, cli):
    out = tmp_path / "m.svg"
    assert cli("inspect", files["pruned"], "--plot", out).code == 0
    assert b"<svg" in out.read_bytes()[:2000]


def test_plot_with_unknown_extension_is_refused(files, tmp_path, cli):
    out = tmp_path / "m.txt"
    line = one_line_error(cli("inspect", files["pruned"], "--plot", out))
    assert ".png" in line
    assert not out.exists()


@pytest.mark.parametrize(("flag", "value"), [("--lr", "-1"), ("--label-smoothing", "1.5"),
                                             ("--seed", str(2**70)), ("--width", "inf")])
def test_messages_name_the_flag_not_a_class(tmp_path, cli, flag, value):
    line = one_line_error(cli("train", "--model", "tiny-cnn", "--data", "synthetic", flag, value,
                              "-o", tmp_path / "t"))  # fmt: skip
    assert flag in line and "TrainConfig" not in line


def test_train_config_message_names_no_class():
    from gpuprune.errors import UserError
    from gpuprune.train import TrainConfig

    with pytest.raises(UserError) as err:
        TrainConfig(momentum=1.5)
    assert "TrainConfig" not in str(err.value) and "momentum" in str(err.value)
