"""Helpers for checking kernels: block-masked random weights and a scale-relative comparison.

Used by the test suites of every backend and by benchmarks that need a weight of a given block
sparsity without running a pruner.
"""

from __future__ import annotations

import torch

from gpuprune.gemm import block_grid, expand_blocks


def block_masked(
    m: int, k: int, block: tuple[int, int], density: float, gen: torch.Generator | None = None
) -> torch.Tensor:
    """A random [m, k] float32 weight with whole ``block``s zeroed, about ``density`` kept.

    With two or more row-blocks the first is fully pruned and the last fully dense, so every
    kernel meets both extremes.
    """
    w = torch.randn(m, k, generator=gen)
    gm, gk = block_grid((m, k), block)
    keep = torch.rand(gm, gk, generator=gen) < density
    if gm > 1:
        keep[0] = False
        keep[-1] = True
    return w * expand_blocks(keep, block, (m, k))


def assert_close_rel(y: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    """Assert ``y`` equals ``ref`` within ``rel`` of the reference's scale (float32 sums differ
    in order between kernels, so an element near zero is judged against the output's scale)."""
    assert y.shape == ref.shape, f"shape {tuple(y.shape)} != {tuple(ref.shape)}"
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    torch.testing.assert_close(y, ref, rtol=rel, atol=rel * scale)
