"""Importance scores: a non-negative [M, K] map per layer; methods average it over their blocks.

Registered scores (``IMPORTANCES``): ``magnitude`` (|w|, so block scores are mean L1), ``l2``
(w^2, block scores are mean squares), ``taylor`` (first-order Taylor, |w * dL/dw| with the gradient
averaged over a few batches; needs data), ``random`` (a control) and ``obs`` (Optimal Brain
Surgeon on whole blocks, :mod:`gpuprune.prune.obs`: blocks are chosen by the layer output error
their removal causes on calibration inputs, and the kept weights are re-fitted; needs data; its
map here is |w|, used only by allocations that rank layers). Scores are taken from the
effective (masked) weight, so a weight pruned earlier scores 0 and stays pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gpuprune.errors import UserError
from gpuprune.gemm import gemm_view
from gpuprune.prune.masks import gemm_layout, stored_weight
from gpuprune.registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Importance:
    """``score(weight, grad) -> [M, K]``; ``grad`` is None unless ``needs_grad``.

    ``score`` returns a new tensor and must not modify ``weight``: it may be the layer's stored
    weight itself (while its mask keeps everything).

    ``reconstructs``: the pruner hands mask choice and weight update to :mod:`gpuprune.prune.obs`.
    """

    score: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    needs_grad: bool = False
    reconstructs: bool = False


IMPORTANCES: Registry[Importance] = Registry("importance")
IMPORTANCES.add("magnitude", Importance(lambda w, g: w.abs()))
IMPORTANCES.add("l2", Importance(lambda w, g: w.square()))
IMPORTANCES.add("taylor", Importance(lambda w, g: (w * g).abs(), needs_grad=True))
IMPORTANCES.add("random", Importance(lambda w, g: torch.rand_like(w) * (w != 0)))
IMPORTANCES.add("obs", Importance(lambda w, g: w.abs(), reconstructs=True))


def mean_gradients(
    model: nn.Module, layers: dict[str, nn.Module], data: Sequence[Batch], loss_fn: LossFn
) -> dict[str, torch.Tensor]:
    """Gradient of the loss w.r.t. each layer's effective weight, [M, K], averaged over batches.

    Runs in eval mode (batch-norm statistics are not updated) and leaves ``.grad`` untouched.
    """
    if not data:
        raise UserError("taylor importance needs data", "pass data=[(x, y), ...] (a few batches)")
    params = [_weight_param(m) for m in layers.values()]
    sums = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    try:
        device = params[0].device
        for x, y in data:
            loss = loss_fn(model(x.to(device)), y.to(device))
            for acc, g in zip(
                sums, torch.autograd.grad(loss, params, allow_unused=True), strict=True
            ):
                if g is not None:
                    acc += g
    finally:
        model.train(was_training)
    return {n: gemm_view(gemm_layout(m, s / len(data)))
            for (n, m), s in zip(layers.items(), sums, strict=True)}  # fmt: skip


def _weight_param(module: nn.Module) -> torch.Tensor:
    # With a mask parametrization the leaf is `original`; its gradient is dL/dw_eff * mask,
    # which is dL/dw_eff wherever the weight is kept (the only places a score matters).
    return stored_weight(module)
