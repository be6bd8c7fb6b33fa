"""Data parallel: two CPU processes under torchrun (gloo) train one model; rank 0 alone writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpuprune.data import load_dataset
from gpuprune.models import create_model
from gpuprune.train import evaluate

pytestmark = pytest.mark.distributed


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def test_two_cpu_processes_train_one_model(tmp_path: Path) -> None:
    gpuprune = shutil.which("gpuprune", path=str(Path(sys.executable).parent))
    assert gpuprune, "the gpuprune console script is installed beside python"
    out = tmp_path / "run"
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node", "2", gpuprune, "train",
           "--model", "tiny-cnn", "--data", "synthetic", "--epochs", "2", "--batch-size", "32",
           "--lr", "0.05", "-o", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("test accuracy") == 1  # only rank 0 reports and writes

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    # 512 synthetic train images = 2 ranks x 8 steps x 32 images per epoch, summed over ranks
    assert history[0]["images"] == 512

    # The reduced test accuracy equals a single-process evaluation of the saved model.
    data = load_dataset("synthetic")
    model = create_model("tiny-cnn", data.num_classes, data.in_channels)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    _, acc = evaluate(model, data)
    assert acc == pytest.approx(summary["test_acc"], abs=1e-9)
    assert acc > 0.3  # two epochs on the easy synthetic set learn something
    assert torch.isfinite(torch.tensor(summary["test_loss"]))


def test_experiment_runs_data_parallel_under_torchrun(tmp_path: Path) -> None:
    import yaml

    gpuprune = shutil.which("gpuprune", path=str(Path(sys.executable).parent))
    config = {
        "data": {"name": "synthetic", "options": {"train": 128, "test": 64, "size": 8,
                                                  "channels": 1}},
        "model": {"name": "tiny-cnn"},
        "dense": {"epochs": 1, "batch_size": 16},
        "finetune": {"epochs": 1, "batch_size": 16, "lr": 0.01},
        "prune": {"methods": ["unstructured"], "sparsities": [0.5], "schedule": "agp",
                  "exclude_first_last": False},
        "latency": {"backends": ["reference"], "repeats": 3, "warmup": 1, "budget_s": 0.1},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node", "2", gpuprune, "run",
           str(tmp_path / "c.yaml"), "-o", str(tmp_path / "run"), "--no-report"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.count("dense tiny-cnn: accuracy") == 1  # rank 0 alone reports
    dense = json.loads((tmp_path / "run" / "dense" / "result.json").read_text())
    assert dense["history"][0]["images"] == 128  # 2 ranks x 4 steps x 16 images
    cell = json.loads((tmp_path / "run" / "cells" / "unstructured-0.5.json").read_text())
    assert cell["status"] == "ok" and cell["achieved_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert cell["finetune"]["history"][0]["images"] == 128
