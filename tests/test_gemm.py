"""The GEMM view of Conv2d/Linear weights, its inverse, and block arithmetic with ragged edges."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gpuprune.errors import UnsupportedLayerError
from gpuprune.gemm import (
    block_grid,
    block_reduce,
    block_sizes,
    expand_blocks,
    from_gemm,
    gemm_shape,
    gemm_view,
    is_gemm_layer,
    to_blocks,
)


@settings(max_examples=40, deadline=None)
@given(
    cin=st.integers(1, 9),
    cout=st.integers(1, 9),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    stride=st.integers(1, 2),
    pad=st.integers(0, 2),
    dil=st.integers(1, 2),
)
def test_conv_gemm_view_is_the_im2col_product(cin, cout, kh, kw, stride, pad, dil):
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=pad, dilation=dil, bias=False)
    x = torch.randn(2, cin, 7, 8)
    w = gemm_view(conv)
    assert w.shape == (cout, cin * kh * kw) == gemm_shape(conv)
    if kh * kw == 1:
        assert w.data_ptr() == conv.weight.data_ptr(), "a 1x1 kernel's view is no copy"
    cols = F.unfold(x, (kh, kw), dilation=dil, padding=pad, stride=stride)  # [B, K, L]
    # unfold's rows are (c, kh, kw); the view's K is (kh, kw, c): column t * cin + c
    order = [t * cin + c for c in range(cin) for t in range(kh * kw)]
    cols = cols[:, torch.argsort(torch.tensor(order))]
    out = conv(x)
    lowered = (w @ cols).reshape(out.shape)
    torch.testing.assert_close(lowered, out, rtol=1e-5, atol=1e-5)
    assert torch.equal(from_gemm(w, conv), conv.weight)


def test_linear_view_and_inverse():
    lin = nn.Linear(13, 7)
    assert gemm_view(lin).shape == (7, 13)
    m = torch.randn(7, 13)
    assert torch.equal(gemm_view(from_gemm(m, lin)), m)
    with pytest.raises(ValueError, match="not the GEMM view"):
        from_gemm(torch.randn(7, 12), lin)


def test_grouped_conv_view_stacks_its_group_gemms():
    conv = nn.Conv2d(8, 4, 3, groups=2)
    assert is_gemm_layer(conv) and gemm_shape(conv) == (4, 4 * 9)
    rows = conv.weight[2:].permute(0, 2, 3, 1).reshape(2, -1)  # group 1's, K (kh, kw, c)
    assert torch.equal(gemm_view(conv)[2:], rows)


def test_conv_k_order_is_taps_then_channels():
    """K = (kh, kw, c_in), c_in fastest: a K block is one tap of a run of input channels."""
    conv = nn.Conv2d(3, 2, (2, 2))
    with torch.no_grad():
        conv.weight.copy_(torch.arange(24.0).view(2, 3, 2, 2))  # value = ((o*3 + c)*2 + i)*2 + j
    w = gemm_view(conv)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert w[1, (i * 2 + j) * 3 + c] == conv.weight[1, c, i, j]


@pytest.mark.parametrize(
    "layer, match",
    [
        (nn.Conv3d(8, 8, 3), "Conv3d"),
        (nn.BatchNorm2d(4), "BatchNorm2d has no GEMM view"),
        (nn.ConvTranspose3d(4, 4, 3), "ConvTranspose3d"),
    ],
)
def test_unsupported_layers_are_refused_clearly(layer, match):
    assert not is_gemm_layer(layer)
    with pytest.raises(UnsupportedLayerError, match=match) as info:
        gemm_view(layer)
    assert "\n" not in str(info.value)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 40),
    bm=st.integers(1, 16),
    bk=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_blocks_with_ragged_edges(m, k, bm, bk, seed):
    g = torch.Generator().manual_seed(seed)
    mat = torch.randn(m, k, generator=g)
    gm, gk = block_grid((m, k), (bm, bk))
    assert gm == -(-m // bm) and gk == -(-k // bk)
    blocks = to_blocks(mat, (bm, bk))
    assert blocks.shape == (gm, gk, bm, bk)
    # every element sits in exactly one block; padding is zero
    torch.testing.assert_close(block_reduce(mat, (bm, bk)).sum(), mat.sum(), rtol=1e-4, atol=1e-3)
    sizes = block_sizes((m, k), (bm, bk))
    assert sizes.sum() == m * k
    assert sizes[-1, -1] == (m - (gm - 1) * bm) * (k - (gk - 1) * bk)
    # a random block mask expands to an element mask whose blocks are exactly that mask
    bmask = torch.rand(gm, gk, generator=g) > 0.5
    emask = expand_blocks(bmask, (bm, bk), (m, k))
    assert emask.shape == (m, k)
    assert torch.equal(block_reduce(emask, (bm, bk), "any"), bmask)
    # element (i, j) belongs to block (i // bm, j // bk)
    i, j = m - 1, k - 1
    assert emask[i, j] == bmask[i // bm, j // bk]
