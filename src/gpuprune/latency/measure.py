"""Timing one layer through a kernel backend, with a synthetic weight of a chosen kept fraction."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gpuprune.arch import Target
from gpuprune.gemm import block_grid, expand_blocks
from gpuprune.kernels import Backend, pack_for
from gpuprune.kernels.format import block_for
from gpuprune.latency.geometry import LayerGeometry

Timer = Callable[[Callable[[], object]], float]  # fn -> milliseconds


def default_timer(fn: Callable[[], object]) -> float:
    """Minimum milliseconds of a few timed calls: the least disturbed by other work on the host."""
    from gpuprune.bench.timing import measure

    return measure(fn, warmup=2, repeats=5, budget_s=1.0).min_ms


def probe_weight(
    geom: LayerGeometry, block: tuple[int, int], kept: float, seed: int = 0
) -> torch.Tensor:
    """A random [M, K] weight keeping ``round(kept * gk)`` random blocks of every row-block.

    Every row-block keeps the same count, so the work is balanced and the measured time depends
    on the kept fraction alone, not on which row tile happens to be the slowest.
    """
    g = torch.Generator().manual_seed(seed)
    gm, gk = block_grid((geom.m, geom.k), block)
    count = min(gk, max(1, round(kept * gk)))
    order = torch.rand(gm, gk, generator=g).argsort(dim=1)
    keep = order < count
    w = torch.randn(geom.m, geom.k, generator=g)
    return w * expand_blocks(keep, block, (geom.m, geom.k))


def build_layer(
    backend: Backend, geom: LayerGeometry, target: Target, variant: str, weight: torch.Tensor
) -> Callable[[], object]:
    """A no-argument call that runs the layer once on a fixed random input."""
    packed = pack_for(weight, target, variant)
    g = torch.Generator().manual_seed(1)
    if geom.kind == "linear":
        layer = backend.linear(packed, None, target, variant=variant)
        x = torch.randn(geom.batch, geom.k, generator=g)
    else:
        # the skip layer pads first (pre_pad), then runs the kernel: time the kernel on that input
        left, right, top, bottom = geom.conv.pre_pad
        h, w = geom.in_hw
        pool = geom.pool if getattr(backend, "fuses_maxpool", False) else None  # as compiled
        layer = backend.conv2d(packed, None, target, variant=variant, geometry=geom.conv.kernel(),
                               **({"pool": pool} if pool else {}))  # fmt: skip
        x = torch.randn(geom.batch, geom.in_channels, h + top + bottom, w + left + right,
                        generator=g)  # fmt: skip
    return lambda: layer(x)


def measure_layer(
    backend: Backend,
    geom: LayerGeometry,
    target: Target,
    variant: str = "tile",
    kept: float = 1.0,
    timer: Timer | None = None,
    seed: int = 0,
) -> float:
    """Milliseconds of one forward of the layer with ``kept`` of the variant's blocks kept."""
    block = block_for(target, variant)
    fn = build_layer(backend, geom, target, variant, probe_weight(geom, block, kept, seed))
    return (timer or default_timer)(fn)
