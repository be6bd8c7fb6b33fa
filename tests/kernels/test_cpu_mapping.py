"""How the cpu kernel maps input pixels into panels, on every build the host can run.

A vector of output pixels that spans two output rows reads two runs of input pixels (ResNet's
56, 28, 14 and 7 wide images), which the kernel gathers. Widths that are no multiple of any
vector width (5 to 13, 56) put such vectors at every offset, with padding columns on either
side of the row boundary; dilation, larger kernels and vectors that also cross into the next
image are covered too. A stride-2 convolution's vector inside one output row reads every other
pixel of one run (ResNet's stem and downsampling convolutions): images 40 to 70 pixels wide
give such vectors with padding at either end, and vectors across rows. The kernel reads those
through the input's phases (rows and columns of one parity): odd sizes leave one phase a row
or column short, and a 1x1 kernel with odd padding reads only the odd phase.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_cpu import assert_matches, block_masked  # same folder
from test_cpu_narrow import BLOCKS, _block, cpu  # noqa: F401  (cpu: the per-build fixture)

from gpuprune.gemm import from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import pack_for


@pytest.mark.parametrize("block", BLOCKS[:2] + BLOCKS[-1:], ids=lambda b: f"{b[0].name}-{b[1]}")
@pytest.mark.parametrize("kernel,pad,dil", [(3, 1, 1), (3, 2, 2), (5, 2, 1), (1, 0, 1)])
def test_vectors_across_output_rows_match(cpu, block, kernel, pad, dil):  # noqa: F811
    _check(cpu, block, kernel, 1, pad, dil, [(5, 5), (6, 7), (4, 9), (3, 11), (5, 13), (6, 56)])


@pytest.mark.parametrize("block", BLOCKS[:2] + BLOCKS[-1:], ids=lambda b: f"{b[0].name}-{b[1]}")
@pytest.mark.parametrize("kernel,pad", [(7, 3), (3, 1), (1, 0), (3, 0), (1, 1), (2, 0)])
def test_stride_two_runs_match(cpu, block, kernel, pad):  # noqa: F811
    _check(cpu, block, kernel, 2, pad, 1, [(8, 40), (7, 56), (5, 70), (9, 9), (4, 33)])


def _check(cpu, block, kernel, stride, pad, dil, sizes):  # noqa: F811
    target, variant = block
    cin, cout = 3, 33
    weight = block_masked(cout, cin * kernel * kernel, _block(target, variant), 0.6, seed=19)
    bias = torch.randn(cout)
    layer = cpu.conv2d(
        pack_for(weight, target, variant), bias, target, variant=variant,
        geometry=ConvGeometry(cin, (kernel, kernel), (stride, stride), (pad, pad), (dil, dil)),
    )  # fmt: skip
    ref_weight = from_gemm(weight, (cout, cin, kernel, kernel))
    for height, width in sizes:
        x = torch.randn(2, cin, height, width)
        ref = F.conv2d(x, ref_weight, bias, stride=stride, padding=pad, dilation=dil)
        for _ in range(2):  # the first call of a shape builds the tables
            assert_matches(layer(x), ref)
