"""The reference backend: plain PyTorch on the weight rebuilt from its packed blocks.

It is the correctness oracle for the other backends: it skips nothing, but it reads the weight
only through the packed format (``to_dense()``), so a packing bug shows up here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gpuprune.arch import Target
from gpuprune.gemm import from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels.backends import (
    BACKENDS,
    Backend,
    Forward,
    check_conv_shape,
    check_input,
    check_variant,
)
from gpuprune.kernels.format import BlockSparseWeight


def _bias(bias: Tensor | None, m: int) -> Tensor | None:
    if bias is None:
        return None
    return bias.detach().to(device="cpu", dtype=torch.float32).reshape(m).clone()


@BACKENDS.register("reference")
class ReferenceBackend(Backend):
    """Dense PyTorch ops on ``packed.to_dense()``: slow, simple, trusted."""

    name = "reference"

    def linear(
        self,
        packed: BlockSparseWeight,
        bias: Tensor | None,
        target: Target,
        *,
        variant: str,
        relu: bool = False,
    ) -> Forward:
        check_variant(variant, packed, target)
        weight = packed.to_dense()
        b = _bias(bias, packed.shape[0])

        def forward(x: Tensor) -> Tensor:
            check_input(x, 2, packed.shape[1], "Linear")
            y = F.linear(x, weight, b)
            return torch.relu(y) if relu else y

        return forward

    def conv2d(
        self,
        packed: BlockSparseWeight,
        bias: Tensor | None,
        target: Target,
        *,
        variant: str,
        geometry: ConvGeometry,
        relu: bool = False,
    ) -> Forward:
        check_variant(variant, packed, target)
        check_conv_shape(packed, geometry)
        g = geometry
        weight = from_gemm(packed.to_dense(), (packed.shape[0], g.in_channels, *g.kernel_size))
        b = _bias(bias, packed.shape[0])

        def forward(x: Tensor) -> Tensor:
            check_input(x, 4, g.in_channels, "Conv2d")
            y = F.conv2d(x, weight, b, stride=g.stride, padding=g.padding, dilation=g.dilation)
            return torch.relu(y) if relu else y

        return forward
