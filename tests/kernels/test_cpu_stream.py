"""Streamed (non-temporal) stores of large outputs: the same results as cached stores.

The kernel streams an output when it is larger than the threads' L2 caches together, which
depends on the host; ``gp_set_stream_min_bytes(0)`` streams every output instead, so each case
runs both ways on every build the host can run, whatever its caches. Rows that are not
64-byte aligned (a 7x7 plane) fall back to cached stores inside a streamed call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_cpu import _pooled_ref, assert_matches, block_masked  # same folder
from test_cpu_narrow import BLOCKS, _block, cpu  # noqa: F401  (cpu: the per-build fixture)

from gpuprune.gemm import from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import pack_for
from gpuprune.kernels.cpu import build

NEVER = 1 << 62  # bytes: no output is this large


def _both(layer, x, **kwargs):
    """The layer's output with every output streamed, then with none (twice each: the first call
    of a shape prepares tables, later ones run natively)."""
    lib = build.load_library()
    outs = []
    try:
        for threshold in (0, NEVER):
            lib.gp_set_stream_min_bytes(threshold)
            layer(x, **kwargs)
            outs.append(layer(x, **kwargs))
    finally:
        lib.gp_set_stream_min_bytes(-1)
    return outs


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0].name}-{b[1]}")
@pytest.mark.parametrize("batch,side", [(2, 32), (3, 7), (1, 16)])
def test_streamed_convolutions_equal_cached(cpu, block, batch, side):  # noqa: F811
    """Aligned planes (32x32, 16x16), ragged ones (7x7, panels across images), M = 37 ragged."""
    target, variant = block
    cin, cout = 5, 37
    weight = block_masked(cout, cin * 9, _block(target, variant), 0.5, seed=11)
    bias = torch.randn(cout)
    layer = cpu.conv2d(
        pack_for(weight, target, variant), bias, target, variant=variant,
        geometry=ConvGeometry(cin, (3, 3), (1, 1), (1, 1)), relu=True,
    )  # fmt: skip
    x = torch.randn(batch, cin, side, side)
    streamed, cached = _both(layer, x)
    assert torch.equal(streamed, cached)
    ref = F.conv2d(x, from_gemm(weight, (cout, cin, 3, 3)), bias, padding=1).relu()
    assert_matches(streamed, ref)


@pytest.mark.parametrize("block", BLOCKS[:2], ids=lambda b: f"{b[0].name}-{b[1]}")
def test_streamed_residual_and_pooled_stores(cpu, block):  # noqa: F811
    target, variant = block
    cin, cout = 6, 40
    weight = block_masked(cout, cin, _block(target, variant), 0.5, seed=13)
    layer = cpu.conv2d(pack_for(weight, target, variant), None, target, variant=variant,
                       geometry=ConvGeometry(cin, (1, 1), (1, 1), (0, 0)))  # fmt: skip
    x, res = torch.randn(2, cin, 16, 16), torch.randn(2, cout, 16, 16)
    streamed, cached = _both(layer, x, residual=res, residual_relu=True)
    assert torch.equal(streamed, cached)
    assert_matches(streamed, (F.conv2d(x, from_gemm(weight, (cout, cin, 1, 1))) + res).relu())

    weight = block_masked(cout, cin * 9, _block(target, variant), 0.5, seed=17)
    pooled = cpu.conv2d(pack_for(weight, target, variant), None, target, variant=variant,
                        geometry=ConvGeometry(cin, (3, 3), (1, 1), (1, 1)), relu=True,
                        pool="floor")  # fmt: skip
    x = torch.randn(2, cin, 32, 32)
    streamed, cached = _both(pooled, x)
    assert torch.equal(streamed, cached)
    assert_matches(streamed, _pooled_ref(x, weight, None, (3, 3), 1, 1, (1, 1), relu=True,
                                         pool="floor"))  # fmt: skip
