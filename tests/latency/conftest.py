"""Fixtures for the latency tests: a private cache folder, one thread, fixed seeds."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # never touch the user's ~/.cache; tiny tensors run best on one thread on a shared machine
    monkeypatch.setenv("GPUPRUNE_LATENCY_CACHE", str(tmp_path / "latency-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
