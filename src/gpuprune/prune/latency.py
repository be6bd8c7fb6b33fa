"""Measured latency of one layer at a given output-channel count (for channel-perf)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from gpuprune.prune.layers import LayerSpec


def measure_latency(layer: LayerSpec, channels: int, repeats: int = 10) -> float:
    """Seconds for one forward pass of the layer narrowed to ``channels`` outputs (torch, CPU).

    The minimum over ``repeats`` timed runs after three warm-ups, on one thread: the minimum is
    the least disturbed by other work, and one thread avoids the thread pool's wake-up jitter.
    """
    mod = layer.module
    conv = isinstance(mod, nn.Conv2d)
    # The probe's tensors are filled with one value: a random init of a 100M-weight probe costs
    # more than timing it, and a dense pass takes as long whatever the (normal) values.
    if conv:
        weight = torch.empty(channels, mod.in_channels, *mod.kernel_size)
        bias = torch.empty(channels) if mod.bias is not None else None
        x = torch.randn(1, mod.in_channels, *(layer.in_hw or (32, 32)))
    else:
        weight, bias = torch.empty(channels, layer.shape[1]), torch.empty(channels)
        x = torch.randn(1, layer.shape[1])
    for t in (weight, bias):
        if t is not None:
            t.fill_(0.01)

    def probe(x: torch.Tensor) -> torch.Tensor:  # what nn.Conv2d / nn.Linear's forward calls
        if conv:
            return F.conv2d(x, weight, bias, mod.stride, mod.padding, mod.dilation)
        return F.linear(x, weight, bias)

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
