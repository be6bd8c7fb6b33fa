"""Real kills (SIGKILL) mid-epoch, mid-cell and mid-checkpoint-write, then resume; two runs at once.

A resumed run must end with exactly the metrics of an uninterrupted one (CPU, same seed), and a
killed write must leave the previous file whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from reliability_helpers import TINY_CONFIG, Exploit, one_line_error
from safetensors.torch import load_file

from gpuprune.experiment import parse_config, run_experiment

DRIVER = Path(__file__).with_name("fault_driver.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
TIMING = {"seconds", "images_per_s"}
TRAIN = ("train", "--model", "tiny-cnn", "--data", "synthetic", "--train-subset", "256",
         "--epochs", "3", "--batch-size", "64", "--seed", "0")  # fmt: skip  # 4 steps per epoch


def _start(*args: object, driver: tuple[str, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, str(DRIVER), *driver, "--", *map(str, args)]
    # stderr to a file: a full pipe would block the child before it reaches its pause
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=ENV)
    proc.err_file = err  # type: ignore[attr-defined]
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    proc.err_file.seek(0)  # type: ignore[attr-defined]
    return proc.err_file.read()  # type: ignore[attr-defined]


def _run(*args: object) -> subprocess.CompletedProcess:
    proc = _start(*args)
    out, _ = proc.communicate(timeout=240)
    err = _stderr(proc)
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _kill_at_pause(proc: subprocess.Popen) -> None:
    """Wait for the driver's PAUSED line, then SIGKILL (no cleanup handlers run)."""
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "PAUSED":
                break
        else:
            pytest.fail(f"never paused: {_stderr(proc)[-3000:]}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _history(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def reference_train(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "train"
    _run(*TRAIN, "-o", out)
    return out


def _same_training(got: Path, want: Path) -> None:
    a, b = json.loads((got / "summary.json").read_text()), json.loads(
        (want / "summary.json").read_text())  # fmt: skip
    assert (a["test_acc"], a["test_loss"]) == (b["test_acc"], b["test_loss"])  # exactly
    assert _history(got / "metrics.jsonl") == _history(want / "metrics.jsonl")
    sa, sb = load_file(str(got / "model.safetensors")), load_file(str(want / "model.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_train_killed_mid_epoch_then_resumed(reference_train, tmp_path):
    out = tmp_path / "train"
    # step 6 of 12: mid second epoch, after the first epoch's checkpoint
    proc = _start(*TRAIN, "-o", out, driver=("--pause-step", "6", "--when-exists",
                                             str(out / "checkpoint.pt")))  # fmt: skip
    _kill_at_pause(proc)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (out / "model.safetensors").exists()
    _run(*TRAIN, "-o", out, "--resume")
    _same_training(out, reference_train)


@pytest.mark.slow
def test_killed_mid_checkpoint_write_keeps_the_last_checkpoint(reference_train, tmp_path):
    out = tmp_path / "train"
    proc = _start(*TRAIN, "-o", out, driver=("--pause-in-save", "--when-exists",
                                             str(out / "checkpoint.pt")))  # fmt: skip
    _kill_at_pause(proc)
    # the second epoch's checkpoint was half written: the first one is still there, whole
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert len(_history(out / "metrics.jsonl")) == 1
    assert list(out.glob(".checkpoint.pt.*.tmp"))  # the half-written temp file, never read
    _run(*TRAIN, "-o", out, "--resume")
    _same_training(out, reference_train)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("refrun") / "run"
    cfg = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CONFIG))
    _run("run", cfg, "-o", run, "--no-report")
    return run


def _metrics(summary: dict) -> dict:
    cells = {
        (c["method"], c["sparsity"]): (
            c["status"], c["accuracy"], c["test_loss"], c["achieved_sparsity"],
            [{k: v for k, v in h.items() if k not in TIMING} for h in c["finetune"]["history"]],
        )
        for c in summary["cells"]
    }  # fmt: skip
    dense = summary["dense"]
    history = [{k: v for k, v in h.items() if k not in TIMING} for h in dense["history"]]
    return {"dense": (dense["accuracy"], dense["test_loss"], history), "cells": cells}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["dense", "cell"])
def test_run_killed_mid_epoch_then_resumed(reference_run, tmp_path, where):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CONFIG))
    run = tmp_path / "run"
    # dense: 4 steps per epoch, 2 epochs; cells: 2 steps per epoch, 2 epochs
    pause = {"dense": ("--pause-step", "5", "--when-exists", str(run / "dense/checkpoint.pt")),
             "cell": ("--pause-step", "3", "--when-exists", str(run / "cells/*/checkpoint.pt"))}
    proc = _start("run", cfg, "-o", run, "--no-report", driver=pause[where])
    _kill_at_pause(proc)
    assert not (run / "summary.json").exists()
    _run("run", cfg, "-o", run, "--no-report")
    got = json.loads((run / "summary.json").read_text())
    want = json.loads((reference_run / "summary.json").read_text())
    assert _metrics(got) == _metrics(want)
    name = "cells/unstructured-0.5/model.safetensors"
    sa, sb = load_file(str(run / name)), load_file(str(reference_run / name))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_two_runs_in_one_folder(tmp_path, cli, tiny_config):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config))
    run = tmp_path / "run"
    first = _start("run", cfg, "-o", run, "--no-report", driver=("--pause-step", "1"))
    try:
        for line in first.stdout:  # type: ignore[union-attr]
            if line.strip() == "PAUSED":
                break
        line = one_line_error(cli("run", cfg, "-o", run, "--no-report"))
        assert "in use by another gpuprune run" in line
        assert not (run / "dense" / "model.safetensors").exists()
    finally:
        first.kill()
        first.wait(timeout=60)
    # the kernel dropped the killed run's lock: the folder is usable again
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    assert [c["status"] for c in summary["cells"]] == ["ok"]


@pytest.mark.slow
def test_two_trainings_in_one_folder(tmp_path, cli):
    out = tmp_path / "train"
    first = _start(*TRAIN, "-o", out, driver=("--pause-step", "1"))
    try:
        for line in first.stdout:  # type: ignore[union-attr]
            if line.strip() == "PAUSED":
                break
        line = one_line_error(cli(*TRAIN, "-o", out))
        assert "in use" in line
    finally:
        first.kill()
        first.wait(timeout=60)


def _middle_of_largest_member(data: bytes) -> int:
    """Offset of a byte inside the largest stored tensor: a flip there changes the weights.

    (A flip in a zip member's alignment padding changes nothing that is loaded.)
    """
    import io
    import struct
    import zipfile

    info = max(zipfile.ZipFile(io.BytesIO(data)).infolist(), key=lambda i: i.file_size)
    at = info.header_offset  # the local header: name and extra-field lengths at bytes 26..29
    name_len, extra_len = struct.unpack("<HH", data[at + 26 : at + 30])
    start = at + 30 + name_len + extra_len
    return start + info.file_size // 2


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "code inside", "other recipe"])
def test_resume_from_a_damaged_checkpoint(reference_train, tmp_path, cli, damage):
    out = tmp_path / "train"
    out.mkdir()
    ckpt = out / "checkpoint.pt"
    marker = tmp_path / "pwned"
    if damage == "code inside":
        torch.save({"epoch": 1, "model": Exploit(marker)}, ckpt)
    else:
        data = bytearray((reference_train / "checkpoint.pt").read_bytes())
        if damage == "truncated":
            data = data[: len(data) // 2]
        elif damage == "bit-flipped":
            data[_middle_of_largest_member(bytes(data))] ^= 0x10
        ckpt.write_bytes(bytes(data))
    args = list(TRAIN)
    if damage == "other recipe":
        args[args.index("--batch-size") + 1] = "32"
    line = one_line_error(cli(*args, "-o", out, "--resume"))
    assert "checkpoint" in line
    assert not marker.exists()
    assert not (out / "model.safetensors").exists()
