"""The cpu backend's output pool: memory is reused only once nothing can read it."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

from gpuprune.arch import get_target
from gpuprune.gemm import from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import get_backend, pack_for
from gpuprune.kernels.cpu import buffers
from gpuprune.kernels.testing import block_masked

POCL = get_target("cpu-pocl")


def test_slab_is_reused_only_when_no_tensor_or_view_holds_it():
    pool = buffers.OutputPool(min_bytes=16)
    t = pool.empty((4, 8))
    ptr = t.data_ptr()
    view = t[1:]
    del t
    gc.collect()
    assert pool.empty((4, 8)).data_ptr() != ptr  # the view still reads it
    del view
    gc.collect()
    again = pool.empty((4, 8))
    assert again.data_ptr() == ptr and pool.reused == 1
    held = again.numpy()  # numpy shares the memory: it holds the slab too
    del again
    gc.collect()
    assert pool.empty((4, 8)).data_ptr() != ptr
    assert held.shape == (4, 8)


def test_small_outputs_are_plain_tensors_and_pool_keeps_a_few():
    pool = buffers.OutputPool(min_bytes=1 << 20, keep=2)
    small = pool.empty((2, 3))
    assert small.shape == (2, 3) and pool.reused == 0
    big = [pool.empty((1 << 18,)) for _ in range(5)]  # 1 MiB each
    del big
    gc.collect()
    assert len(pool._free[1 << 18]) == 2


def test_layer_outputs_from_the_pool_stay_correct_while_held():
    """Consecutive calls of a layer with large outputs: each result kept by the caller stays
    intact (never handed out again), and a dropped one is reused."""
    cpu = get_backend("cpu")
    try:
        cpu.check_available()
    except Exception as err:  # no C compiler: the kernel tests say so
        pytest.skip(str(err))
    weight = block_masked(64, 4 * 9, POCL.tile_block(), 0.5, torch.Generator().manual_seed(3))
    layer = cpu.conv2d(
        pack_for(weight, POCL, "tile"), None, POCL, variant="tile",
        geometry=ConvGeometry(4, (3, 3), (1, 1), (1, 1), (1, 1)),
    )  # fmt: skip
    x1, x2 = torch.randn(2, 4, 48, 48), torch.randn(2, 4, 48, 48)  # 1.2 MB outputs
    layer(x1)  # the first call of a shape takes the checked path
    before = buffers.POOL.reused
    y1 = layer(x1)
    y2 = layer(x2)
    assert y1.data_ptr() != y2.data_ptr()
    for x, y in ((x1, y1), (x2, y2)):
        torch.testing.assert_close(y, F.conv2d(x, from_gemm(weight, (64, 4, 3, 3)), padding=1),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    ptr = y1.data_ptr()
    del y1
    gc.collect()
    y3 = layer(x2)
    assert y3.data_ptr() == ptr and buffers.POOL.reused > before
    torch.testing.assert_close(y3, y2, rtol=0, atol=0)
