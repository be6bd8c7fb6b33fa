"""The memory layout inference runs in: channels-last (NHWC) convolution weights on the CPU.

oneDNN's NHWC convolutions read the demo's VGG test set 2x as fast as NCHW ones on one core
(measured: 95-107 vs 190-214 ms per 512 images), with the same accuracy and losses equal to
rounding. Training already runs channels-last where the recipe asks for it
(``channels_last`` in :class:`~gpuprune.train.config.TrainConfig`); evaluations outside training
(the test set of a loaded model, one-shot readings, the sensitivity losses of latency planning)
go through :func:`inference_layout`, which changes the layout only for their duration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def _is_nhwc(model: nn.Module) -> bool | None:
    """Whether the first 4-d parameter is channels-last (None: the model has none)."""
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return None


@contextlib.contextmanager
def inference_layout(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model``'s 4-d weights channels-last when it is on the CPU; restored
    after (parameters stay the same objects: only their storage moves)."""
    nhwc = _is_nhwc(model)
    on_cpu = next(model.parameters(), torch.empty(0)).device.type == "cpu"
    if nhwc is not False or not on_cpu:  # nothing to change: no conv, already NHWC, or a GPU
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)
