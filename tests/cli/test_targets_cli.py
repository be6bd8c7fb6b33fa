"""`gpuprune targets` through the real entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from gpuprune import __version__
from gpuprune.arch import TARGETS
from gpuprune.cli.main import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_targets_table_lists_every_preset(capsys):
    code, out, _ = run(capsys, "targets")
    assert code == 0
    for name in TARGETS:
        assert name in out
    assert "16x1" in out and "64x32" in out  # nvidia's SIMD and tile blocks


def test_targets_json(capsys):
    code, out, _ = run(capsys, "targets", "--json")
    data = json.loads(out)
    assert code == 0 and [d["name"] for d in data] == TARGETS.names()
    nv = next(d for d in data if d["name"] == "nvidia")
    assert nv["tile_block"] == [64, 32] and nv["simd_block"] == [16, 1]


def test_show_preset_and_file(capsys, tmp_path):
    code, out, _ = run(capsys, "targets", "show", "amd-gcn", "--json")
    assert code == 0 and json.loads(out)["simd_rows"] == 32
    path = tmp_path / "mine.yaml"
    TARGETS.get("mali").replace(name="mine").save(path)
    code, out, _ = run(capsys, "targets", "show", str(path))
    assert code == 0 and "mine" in out


def test_unknown_preset_is_one_line_exit_2(capsys):
    code, out, err = run(capsys, "targets", "show", "nvidai")
    assert code == 2
    assert err.count("\n") == 1 and "nvidia" in err and "Traceback" not in err


def test_invalid_target_file_is_one_line_exit_2(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        'name = "x"\nvendor = "y"\nsimd_width = 32\nmax_work_group_size = 256\n'
        "local_mem_bytes = 65536\ncompute_units = 1\nmwg = 60\nnwg = 64\nkwg = 32\n"
        "mdimc = 16\nndimc = 8\nvwm = 4\nvwn = 4\n"
    )
    code, _, err = run(capsys, "targets", "show", str(path))
    assert code == 2 and "mwg=60" in err and "mwg=64" in err and err.count("\n") == 1


def test_usage_error_exit_2(capsys):
    code, _, err = run(capsys, "targets", "--bogus")
    assert code == 2 and "No such option" in err


@pytest.mark.opencl
def test_detect_and_save(capsys, tmp_path):
    path = tmp_path / "here.toml"
    code, out, _ = run(capsys, "targets", "--detect", "--json", "--save", str(path))
    assert code == 0
    data = json.loads(out)
    assert data["tile_block"] == [data["mwg"], data["kwg"]]
    code, out, _ = run(capsys, "targets", "show", str(path), "--json")
    assert code == 0 and json.loads(out)["name"] == data["name"]


def test_detect_without_device_exits_2(capsys, monkeypatch):
    import pyopencl as cl

    monkeypatch.setattr(cl, "get_platforms", lambda: [])
    code, _, err = run(capsys, "targets", "--detect", "--backend", "opencl")
    assert code == 2 and "no OpenCL platform" in err and err.count("\n") == 1


def test_installed_entry_point_version_and_help():
    exe = shutil.which("gpuprune") or str(
        __import__("pathlib").Path(sys.executable).with_name("gpuprune")
    )
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert __version__ in out
    for args in (["--help"], ["targets", "--help"], ["targets", "show", "--help"]):
        res = subprocess.run([exe, *args], capture_output=True, text=True)
        assert res.returncode == 0 and "Usage" in res.stdout
