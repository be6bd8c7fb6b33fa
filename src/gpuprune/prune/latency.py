"""Measured latency of one layer at a given output-channel count (for channel-perf)."""

from __future__ import annotations

import time

import torch
from torch import nn

from gpuprune.prune.layers import LayerSpec


def measure_latency(layer: LayerSpec, channels: int, repeats: int = 10) -> float:
    """Seconds for one forward pass of the layer narrowed to ``channels`` outputs (torch, CPU).

    The minimum over ``repeats`` timed runs after three warm-ups, on one thread: the minimum is
    the least disturbed by other work, and one thread avoids the thread pool's wake-up jitter.
    """
    mod = layer.module
    # built on the meta device and filled with one value: the random init of a 100M-weight
    # probe costs more than timing it, and a dense pass takes as long whatever the values
    if isinstance(mod, nn.Conv2d):
        probe = nn.Conv2d(
            mod.in_channels,
            channels,
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.dilation,
            bias=mod.bias is not None,
            device="meta",
        )
        x = torch.randn(1, mod.in_channels, *(layer.in_hw or (32, 32)))
    else:
        probe = nn.Linear(layer.shape[1], channels, device="meta")
        x = torch.randn(1, layer.shape[1])
    probe = probe.to_empty(device="cpu")
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(0.01)
    best = float("inf")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(3):
                probe(x)
            for _ in range(repeats):
                start = time.perf_counter()
                probe(x)
                best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best
