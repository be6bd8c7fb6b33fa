"""A tiny experiment config: synthetic data, the tiny CNN, the reference backend."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    return {
        "name": "tiny",
        "data": {"name": "synthetic",
                 "options": {"train": 192, "test": 64, "size": 8, "channels": 1}},
        "model": {"name": "tiny-cnn", "width": 2.0},
        "dense": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        "finetune": {"epochs": 1, "batch_size": 32, "lr": 0.01, "steps_per_epoch": 3},
        "prune": {"methods": ["unstructured", "tile"], "sparsities": [0.5], "target": "cpu-pocl",
                  "exclude_first_last": False},
        "latency": {"backends": ["reference"], "batch_size": 2, "repeats": 3, "warmup": 1,
                    "budget_s": 0.1},
    }  # fmt: skip
