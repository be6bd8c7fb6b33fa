"""The workloads: VGG16's layers as GEMMs at CIFAR resolution, and masked weights per method."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpuprune.arch import Target

# CIFAR VGG16 convolutions: (in_channels, out_channels, input side); every conv is 3x3, pad 1.
VGG16_CONVS = (
    (3, 64, 32), (64, 64, 32),
    (64, 128, 16), (128, 128, 16),
    (128, 256, 8), (256, 256, 8), (256, 256, 8),
    (256, 512, 4), (512, 512, 4), (512, 512, 4),
    (512, 512, 2), (512, 512, 2), (512, 512, 2),
)  # fmt: skip


@dataclass(frozen=True)
class GemmShape:
    """One layer as ``Out[N, M] = X[N, K] @ W[M, K]^T`` for a batch."""

    layer: str
    m: int
    k: int
    n: int
    cin: int
    side: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def vgg16_gemms(batch: int, width: float = 1.0) -> list[GemmShape]:
    """GEMM shapes of the 13 VGG16 convolutions at CIFAR resolution (32x32 input)."""
    out = []
    for i, (cin, cout, side) in enumerate(VGG16_CONVS):
        cin_w = cin if i == 0 else max(1, round(cin * width))
        cout_w = max(1, round(cout * width))
        out.append(GemmShape(f"conv{i + 1}", cout_w, cin_w * 9, side * side * batch, cin_w, side))
    return out


def masked_weight(
    shape: GemmShape, method: str, sparsity: float, target: Target, seed: int = 0
) -> torch.Tensor:
    """A random [M, K] weight pruned by ``method`` to ``sparsity`` (magnitude importance)."""
    from gpuprune.prune.layers import LayerSpec
    from gpuprune.prune.methods import get_method

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape.m, shape.k, generator=g)
    if method == "dense" or sparsity == 0:
        return w
    spec = LayerSpec(
        name=shape.layer,
        shape=(shape.m, shape.k),
        kernel_area=9,
        target=target,
        out_positions=shape.side * shape.side,
        in_hw=(shape.side, shape.side),
    )
    keep = get_method(method).mask(w.abs(), sparsity, spec)
    return w * keep
