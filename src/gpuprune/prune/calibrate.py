"""Batch-norm recalibration after one-shot pruning: re-estimate running statistics, no training.

Pruning (and more so reconstruction) shifts every later layer's activations, while batch norm
still normalises with the dense model's running mean and variance. A few forward passes with
only the batch-norm layers in train mode, under ``no_grad``, re-estimate them; no weight moves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gpuprune.errors import UserError

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def recalibrate_bn(model: nn.Module, data: Iterable[Any], batches: int = 8) -> int:
    """Reset and re-estimate every batch-norm layer's running statistics on ``data``.

    Args:
        model: the (pruned) model, changed in place; its train/eval mode is restored.
        data: input tensors or ``(x, y)`` batches (labels unused).
        batches: how many batches to average (a cumulative average, not a moving one).

    Returns:
        The number of batches used (0 when the model has no batch norm).
    """
    if batches < 1:
        raise UserError(f"batch-norm recalibration needs batches >= 1, got {batches}",
                        "pass batches=8")  # fmt: skip
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]
    if not bns:
        return 0
    device = next(model.parameters()).device
    momenta = [bn.momentum for bn in bns]
    was = model.training
    model.eval()  # dropout and friends stay in eval: only the statistics are re-estimated
    used = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches seen
            bn.train()
        with torch.no_grad():
            for batch in data:
                if used == batches:
                    break
                x = batch[0] if isinstance(batch, list | tuple) else batch
                model(x.to(device))
                used += 1
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.train(was)
    if used == 0:
        raise UserError("batch-norm recalibration got no data", "pass a few batches of inputs")
    return used
