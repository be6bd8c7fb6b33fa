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


def _opencl_unusable() -> str | None:
    """Why this host's OpenCL device cannot run the opencl tests, or None when it can: like a
    machine without OpenCL, a driver that cannot build kernels here (PoCL's LLVM does not know
    CPUs newer than it) is the environment's limit, not the code's."""
    from gpuprune.errors import UserError

    try:
        from gpuprune.kernels.opencl.context import get_usable_device

        get_usable_device()
    except UserError as err:
        return err.problem
    return None


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("opencl")]
    why = _opencl_unusable() if marked else None
    if why:
        skip = pytest.mark.skip(reason=f"OpenCL unusable here: {why}")
        for item in marked:
            item.add_marker(skip)
