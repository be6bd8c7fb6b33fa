"""Fixtures for the pruning tests."""

from __future__ import annotations

import pytest
import torch
from prune_helpers import SMALL

from gpuprune.arch import Target


@pytest.fixture
def small_target() -> Target:
    return SMALL


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # tiny tensors: one thread avoids thread-pool spin-waits on a shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
