"""Bad command-line values, names and target files: one line naming problem and fix, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from reliability_helpers import TINY_ARGS, one_line_error

from gpuprune.errors import UserError

PRUNE = ("--method", "tile", "--target", "cpu-pocl", "--skip-small")


@pytest.mark.parametrize("value", ["-0.1", "1.0", "abc", "nan", "1.5", "inf"])
def test_bad_sparsity(files, tmp_path, cli, value):
    out = tmp_path / "o.safetensors"
    line = one_line_error(cli("prune", files["pt"], *TINY_ARGS, *PRUNE, "--sparsity", value,
                              "-o", out))  # fmt: skip
    assert "sparsity" in line.lower()
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--method", "nope"), "nope"),
        (("--importance", "nope"), "nope"),
        (("--allocation", "nope"), "nope"),
        (("--target", "no-such-gpu"), "no-such-gpu"),
        (("--model", "no-such-net"), "no-such-net"),
        (("--model", "os:system"), "os:system"),
        (("-O", "novalue"), "KEY=VALUE"),
        (("--importance", "taylor", "--data", "no-such-data"), "no-such-data"),
    ],
)
def test_unknown_names_in_prune(files, tmp_path, cli, args, named):
    base = dict(zip(TINY_ARGS[::2], TINY_ARGS[1::2], strict=True))
    base.update({"--sparsity": "0.5", "--method": "tile", "--target": "cpu-pocl"})
    extra = list(args)
    for i in range(0, len(extra) - 1, 2):
        base.pop(extra[i], None)
    flat = [x for kv in base.items() for x in kv]
    line = one_line_error(cli("prune", files["pt"], *flat, "--skip-small", *extra,
                              "-o", tmp_path / "o.safetensors"))  # fmt: skip
    assert named in line


@pytest.mark.parametrize(
    "args",
    [
        ("prune", "--importance", "taylor", "--data", "synthetic", "--batch-size", "0"),
        ("prune", "--importance", "taylor", "--data", "synthetic", "--batches", "0"),
        ("compile", "--image-size", "-3"),
        ("compile", "--batch", "0"),
        ("compile", "--repeats", "0"),
    ],
)
def test_non_positive_counts(files, tmp_path, cli, args):
    if args[0] == "prune":
        cmd = ("prune", files["pt"], *TINY_ARGS, *PRUNE, "--sparsity", "0.5", *args[1:],
               "-o", tmp_path / "o.safetensors")  # fmt: skip
    else:
        cmd = ("compile", files["pruned"], "--backend", "reference", *args[1:])
    line = one_line_error(cli(*cmd))
    assert args[-2] in line or args[-2].lstrip("-") in line


@pytest.mark.parametrize("backend", ["nope", "cuda-fast"])
def test_unknown_backend(files, cli, backend):
    line = one_line_error(cli("compile", files["pruned"], "--backend", backend))
    assert backend in line


def test_unknown_dataset_in_train(tmp_path, cli):
    line = one_line_error(cli("train", "--model", "tiny-cnn", "--data", "imagenet-xl",
                              "-o", tmp_path / "t"))  # fmt: skip
    assert "imagenet-xl" in line


@pytest.mark.parametrize(
    ("name", "content", "named"),
    [
        ("empty.toml", "", "missing field"),
        ("empty.yaml", "", "target"),
        ("broken.yaml", "name: x\nmwg: [1, 2\n", "broken.yaml"),
        ("broken.toml", "name = \n", "broken.toml"),
        ("list.yaml", "- 1\n- 2\n", "list.yaml"),
        ("badfield.yaml", "name: g\nvendor: v\nsimd_width: 32\nmax_work_group_size: 256\n"
         "local_mem_bytes: 49152\ncompute_units: 1\nmwg: 33\nnwg: 64\nkwg: 32\nmdimc: 16\n"
         "ndimc: 16\nvwm: 2\nvwn: 2\nsimd_k: 1\n", "mwg"),
        ("text.yaml", "name: g\nmwg: sixty-four\n", "g"),
        ("binary.toml", "\udcff\udcfe", "binary.toml"),
    ],
)
def test_bad_target_files(files, tmp_path, cli, name, content, named):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    line = one_line_error(cli("compile", files["pruned"], "--backend", "reference",
                              "--target", path))  # fmt: skip
    assert named in line
    one_line_error(cli("prune", files["pt"], *TINY_ARGS, "--sparsity", "0.5", "--target", path,
                       "-o", tmp_path / "o"))  # fmt: skip


def test_missing_target_file(files, tmp_path, cli):
    line = one_line_error(cli("compile", files["pruned"], "--target", tmp_path / "none.toml"))
    assert "none.toml" in line


def test_debug_shows_the_traceback(tmp_path):
    # The installed console script, as a user runs it.
    args = [sys.executable, "-m", "gpuprune.cli.main"]
    plain = subprocess.run([*args, "inspect", str(tmp_path / "none.safetensors")],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run([*args, "--debug", "inspect", str(tmp_path / "none.safetensors")],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "UserError" in debug.stderr


def test_internal_fault_is_exit_1_with_a_hint(files, cli, monkeypatch):
    monkeypatch.setenv("GPUPRUNE_DEBUG", "")  # --debug below sets it; restored after the test
    import gpuprune.cli.prune as prune_cli

    def broken(*a, **k):
        raise RuntimeError("unexpected state\nsecond line")

    monkeypatch.setattr(prune_cli, "info_from_header", broken)
    line = one_line_error(cli("inspect", files["pruned"]), code=1)
    assert "RuntimeError: unexpected state" in line and "--debug" in line
    with pytest.raises(RuntimeError):
        cli("--debug", "inspect", files["pruned"])


def test_user_error_under_debug_is_raised(files, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("GPUPRUNE_DEBUG", "")
    with pytest.raises(UserError):
        cli("--debug", "inspect", tmp_path / "none.safetensors")


@pytest.mark.opencl
@pytest.mark.parametrize("how", ["broken source", "bad define"])
def test_opencl_build_failure(files, cli, monkeypatch, how):
    from gpuprune.kernels.opencl import programs

    if how == "broken source":
        real = programs.kernel_source
        monkeypatch.setattr(programs, "kernel_source", lambda: real() + "\n#error injected\n")
    else:
        from gpuprune.kernels.opencl import backend

        def bad_define(dev, defines):  # a tile size the OpenCL C compiler cannot parse
            return programs.build_program(dev, {**defines, "MWG": "(32"})

        monkeypatch.setattr(backend, "build_program", bad_define)
    line = one_line_error(cli("compile", files["pruned"], "--backend", "opencl",
                              "--image-size", "8", "--repeats", "1"))  # fmt: skip
    assert "could not build the kernel" in line
