"""Group-lasso penalty of Structured Sparsity Learning (Wen et al. 2016).

Train with ``loss + strength * ssl_penalty(model)`` so whole groups shrink towards zero, then
``prune(model, method="ssl", ...)`` removes the smallest groups. Groups on the [M, K] GEMM view:
``filter`` = a row (output channel), ``shape`` = a column (one (kh, kw, c_in) position across all
filters), ``channel`` = the ``kh*kw`` columns of one input channel (one per tap).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gpuprune.errors import UserError
from gpuprune.gemm import gemm_view
from gpuprune.prune.layers import select_layers

GROUPS = ("filter", "shape", "channel")


def ssl_penalty(
    model: nn.Module,
    groups: Iterable[str] = ("filter", "shape"),
    exclude: Iterable[str] = (),
    exclude_first_last: bool = True,
) -> torch.Tensor:
    """Sum over layers and group kinds of the L2 norms of every group (differentiable scalar).

    As in Wen et al., group norms are not weighted by group size; scale the result with your own
    ``strength`` (e.g. 1e-4 for CIFAR VGG16).
    """
    kinds = tuple(groups)
    bad = [g for g in kinds if g not in GROUPS]
    if bad or not kinds:
        raise UserError(
            f"unknown SSL group {bad[0] if bad else '(none)'!r}",
            f"use some of: {', '.join(GROUPS)}",
        )
    layers = select_layers(model, exclude, exclude_first_last)
    total = next(model.parameters()).new_zeros(())
    for mod in layers.values():
        w = gemm_view(mod.weight)
        if "filter" in kinds:
            total = total + w.norm(dim=1).sum()
        if "shape" in kinds:
            total = total + w.norm(dim=0).sum()
        if "channel" in kinds:
            area = mod.weight[0, 0].numel() if mod.weight.dim() == 4 or isinstance(
                mod, nn.Conv1d) else 1  # fmt: skip
            # gemm_view's K is (kh, kw, c_in): a channel's columns are one per tap, C apart
            total = total + w.reshape(w.shape[0], area, -1).norm(dim=(0, 1)).sum()
    return total
