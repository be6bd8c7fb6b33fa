"""The cpu backend's max pool against PyTorch's, on random shapes, and compile's use of it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gpuprune.errors import UserError
from gpuprune.kernels import get_backend
from gpuprune.kernels.cpu.pool import CpuMaxPool2d


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    try:
        get_backend("cpu").check_available()
    except UserError as err:
        pytest.skip(err.problem)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 19), w=st.integers(1, 19),
    k=st.integers(1, 4), k2=st.integers(1, 4), s=st.integers(1, 3), s2=st.integers(1, 3),
    p=st.integers(0, 2), p2=st.integers(0, 2), ceil=st.booleans(), threads=st.integers(1, 3),
)  # fmt: skip
def test_matches_pytorch_on_random_shapes(b, c, h, w, k, k2, s, s2, p, p2, ceil, threads):
    torch.set_num_threads(threads)
    pool = nn.MaxPool2d((k, k2), (s, s2), (min(p, k // 2), min(p2, k2 // 2)), ceil_mode=ceil)
    x = torch.randn(b, c, h, w)
    try:
        want = pool(x)
    except RuntimeError:  # PyTorch refuses the shape: so must we (its own error)
        with pytest.raises(RuntimeError):
            CpuMaxPool2d(pool)(x)
        return
    got = CpuMaxPool2d(pool)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_nan_wins_and_padding_never_does():
    x = -torch.rand(1, 2, 5, 6) - 1.0  # all negative: a zero from the padding would show
    x[0, 1, 2, 3] = float("nan")
    pool = nn.MaxPool2d(3, 2, 1)
    got, want = CpuMaxPool2d(pool)(x), pool(x)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=0, atol=0)


def test_other_inputs_run_pytorch():
    pool = nn.MaxPool2d(3, 2, 1)
    for x in (torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(3, 8, 8),
              torch.randn(1, 3, 8, 8, requires_grad=True)):  # fmt: skip
        torch.testing.assert_close(CpuMaxPool2d(pool)(x), pool(x))
    assert not CpuMaxPool2d.supports(nn.MaxPool2d(2, dilation=2))
    assert not CpuMaxPool2d.supports(nn.MaxPool2d(2, return_indices=True))


def test_compile_swaps_the_unfused_stem_pool_and_says_so():
    from gpuprune import prune as gp
    from gpuprune.nn import compile as compile_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32 * 8 * 8, 10)).eval()  # fmt: skip
    x = torch.randn(2, 3, 16, 16)
    gp.prune(net, method="tile", sparsity=0.5, target="cpu-pocl", exclude_first_last=False,
             example_inputs=(x,))  # fmt: skip
    want = net(x)
    out = compile_model(net, backend="cpu", verbose=False)
    assert isinstance(out[2], CpuMaxPool2d)
    assert any(n.startswith("max pool 2:") for n in out.gpuprune_compile.notes)
    torch.testing.assert_close(out(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("side", [1, 2, 3, 4, 7, 8, 33, 112])
def test_resnet_stem_pool_every_size(side, ceil):
    """ResNet's 3x3 stride-2 pool has its own vectorised loop for windows inside the row: every
    width, edges on both sides, ceil mode."""
    pool = nn.MaxPool2d(3, 2, 1, ceil_mode=ceil)
    x = torch.randn(2, 3, side + 1, side)
    torch.testing.assert_close(CpuMaxPool2d(pool)(x), pool(x), rtol=0, atol=0)
