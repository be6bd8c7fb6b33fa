"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    # Tiny tensors: one intra-op thread is faster than a pool spin-waiting on a busy shared
    # machine, and the results do not depend on the host's core count. Tests that exercise
    # threading set their own count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)
