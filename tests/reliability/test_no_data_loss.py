"""Nothing of the user's is deleted or overwritten: outputs that are devices, links, folders or
the input; folders gpuprune did not create; finished runs; config.yaml of a rejected config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from reliability_helpers import TINY_ARGS, copy_run, one_line_error, write_config

from gpuprune.experiment import parse_config, run_experiment

PRUNE = ("--sparsity", "0.5", "--target", "cpu-pocl", "--skip-small")
TRAIN = ("train", "--model", "tiny-cnn", "--data", "synthetic", "--train-subset", "64",
         "--epochs", "1", "--batch-size", "32", "--seed", "0")  # fmt: skip


def _prune(cli, files, out, *more):
    return cli("prune", files["pt"], *TINY_ARGS, *PRUNE, "-o", out, *more)


# --- -o PATH: never a device, a link, a folder or the input ----------------------------------


def test_output_device_file_is_refused(files, tmp_path, cli):
    # a private copy of /dev/null's device node (as root), else a socket: never the real one,
    # which a regression run as root would replace with a regular file
    import socket
    import stat

    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        is_special = node.is_char_device
    except PermissionError:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(node))
        sock.close()
        is_special = node.is_socket
    line = one_line_error(_prune(cli, files, node))
    assert f"-o {node}" in line and "not a regular file" in line
    assert is_special()


def test_output_fifo_is_refused(files, tmp_path, cli):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = one_line_error(_prune(cli, files, fifo))
    assert "not a regular file" in line
    assert fifo.is_fifo()


def test_output_symlink_is_refused_and_its_target_kept(files, tmp_path, cli):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "out.safetensors"
    link.symlink_to(target)
    line = one_line_error(_prune(cli, files, link))
    assert "symbolic link" in line
    assert link.is_symlink() and target.read_text() == "keep me"


def test_prune_output_equal_to_input_is_refused(files, tmp_path, cli):
    ckpt = tmp_path / "a.pt"
    ckpt.write_bytes(files["pt"].read_bytes())
    line = one_line_error(cli("prune", ckpt, *TINY_ARGS, *PRUNE, "-o", ckpt))
    assert "also the input" in line
    assert ckpt.read_bytes() == files["pt"].read_bytes()


def test_inspect_plot_equal_to_input_is_refused(files, tmp_path, cli):
    model = tmp_path / "m.safetensors"
    model.write_bytes(files["pruned"].read_bytes())
    line = one_line_error(cli("inspect", model, "--plot", model))
    assert "--plot" in line
    assert model.read_bytes() == files["pruned"].read_bytes()


def test_output_ending_in_slash_is_a_folder(files, tmp_path, cli):
    line = one_line_error(_prune(cli, files, f"{tmp_path / 'newdir'}/"))
    assert "names a folder" in line
    assert not (tmp_path / "newdir").exists()


# --- run folders: marked, never emptied -------------------------------------------------------


def test_run_refuses_a_folder_it_did_not_create(tiny_config, tmp_path, cli):
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    line = one_line_error(cli("run", write_config(tmp_path, tiny_config), "-o", mine))
    assert "did not write" in line
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize("where", ["dense", "cells/unstructured-0.5"])
def test_user_files_in_dense_or_cell_folder_are_never_deleted(finished_run, tiny_config, tmp_path,
                                                              cli, where):  # fmt: skip
    run = copy_run(finished_run, tmp_path)
    folder = run / where
    import shutil

    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    tiny_config["finetune"]["lr"] = 0.02  # a changed config: the cell is stale too
    one_line_error(cli("run", write_config(tmp_path, tiny_config), "-o", run, "--no-report"))
    assert (folder / "notes.txt").read_text() == "mine"


def test_stale_cells_are_moved_aside_not_deleted(finished_run, tiny_config, tmp_path):
    run = copy_run(finished_run, tmp_path)
    old = json.loads((run / "cells" / "unstructured-0.5.json").read_text())
    tiny_config["finetune"]["lr"] = 0.02
    run_experiment(parse_config(tiny_config), run, progress=False)
    kept = list((run / "stale").rglob("unstructured-0.5.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == old
    assert list((run / "stale").rglob("unstructured-0.5/model.safetensors"))
    new = json.loads((run / "cells" / "unstructured-0.5.json").read_text())
    assert new["key"] != old["key"] and new["status"] == "ok"


def test_rejected_config_keeps_the_stored_config(finished_run, tiny_config, tmp_path, cli):
    run = copy_run(finished_run, tmp_path)
    before = (run / "config.yaml").read_bytes()
    tiny_config["prune"]["method_options"] = {"unstructured": {"no_such_option": 1}}
    line = one_line_error(cli("run", write_config(tmp_path, tiny_config), "-o", run))
    assert "prune.method_options.unstructured" in line
    assert (run / "config.yaml").read_bytes() == before


# --- locks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "train"])
def test_lock_symlink_is_refused_not_truncated(tiny_config, tmp_path, cli, command):
    victim = tmp_path / "victim.txt"
    victim.write_text("do not truncate")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    if command == "run":
        res = cli("run", write_config(tmp_path, tiny_config), "-o", out)
    else:
        res = cli(*TRAIN, "-o", out)
    line = one_line_error(res)
    assert ".lock" in line
    assert victim.read_text() == "do not truncate"


# --- train: a finished run is not replaced silently --------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from gpuprune.cli.main import main

    out = tmp_path_factory.mktemp("trained") / "t"
    assert main([*TRAIN, "-o", str(out)]) == 0
    return out


def test_train_refuses_to_overwrite_a_finished_run(trained, tmp_path, cli):
    import shutil

    out = tmp_path / "t"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns(".lock"))
    before = (out / "metrics.jsonl").read_bytes()
    line = one_line_error(cli(*TRAIN, "-o", out))
    assert "--resume" in line and "--force" in line
    assert (out / "metrics.jsonl").read_bytes() == before
    assert cli(*TRAIN, "-o", out, "--force").code == 0


# --- the dense hand-over ------------------------------------------------------------------------


def test_kill_while_timing_the_dense_model_keeps_it(tiny_config, tmp_path, monkeypatch):
    import gpuprune.experiment.runner as runner

    run = tmp_path / "run"
    real_time = runner._time_dense

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill between checkpoint removal and result

    monkeypatch.setattr(runner, "_time_dense", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(parse_config(tiny_config), run, progress=False)
    assert not (run / "dense" / "checkpoint.pt").exists()
    monkeypatch.setattr(runner, "_time_dense", real_time)

    def no_training(*args, **kwargs):
        raise AssertionError("the dense model was trained again")

    monkeypatch.setattr(runner, "fit", no_training)
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    assert summary["dense"]["latency"] and summary["cells"][0]["status"] == "ok"
