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
    if conv:
        x = torch.randn(1, mod.in_channels, *(layer.in_hw or (32, 32)))
        shape = (channels, mod.in_channels, *mod.kernel_size)
    else:
        x = torch.randn(1, layer.shape[1])
        shape = (channels, layer.shape[1])
    weight = _probe_weight(mod, shape)
    bias = torch.full((channels,), 0.01) if not conv or mod.bias is not None else None

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


def _probe_weight(mod: nn.Module | None, shape: tuple[int, ...]) -> torch.Tensor:
    """The probe's weight: the first rows of the layer's own stored weight when it is a float32
    CPU tensor of that shape (a view: no copy, no fresh pages), else a tensor of one value.

    A dense pass takes as long whatever the (finite) values, and a fresh 100M-weight probe per
    channel count cost more than timing it.
    """
    stored = None
    if mod is not None:
        params = getattr(mod, "parametrizations", None)
        stored = params.weight.original if params is not None and "weight" in params else mod.weight
    if (
        isinstance(stored, torch.Tensor)
        and stored.device.type == "cpu"
        and stored.dtype == torch.float32
        and tuple(stored.shape[1:]) == shape[1:]
        and stored.shape[0] >= shape[0]
    ):
        return stored.detach()[: shape[0]]
    return torch.full(shape, 0.01)
