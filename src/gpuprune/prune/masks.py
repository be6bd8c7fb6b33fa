"""Masks as ``torch.nn.utils.parametrize`` parametrizations of ``weight``.

``module.weight`` becomes ``where(mask, original, 0)``: the model trains as usual (gradients
reach only kept weights), the boolean mask is a buffer (so optimizers never touch it and it is in
``state_dict`` as ``<layer>.parametrizations.weight.0.mask``), and :func:`finalize` bakes the zeros
into a plain weight.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class WeightMask(nn.Module):
    """Parametrization keeping the weights where ``mask`` is True and zeroing the rest."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.bool())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # where (not multiply): pruned weights are exactly +0.0 even if the original is inf/nan
        return torch.where(
            self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device)
        )


def _mask_param(module: nn.Module) -> WeightMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, WeightMask):
            return p
    return None


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The boolean keep-mask (weight-shaped) of a layer, or None if it is not masked."""
    p = _mask_param(module)
    return None if p is None else p.mask


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Mask ``module.weight`` (adding the parametrization once) and zero the pruned originals.

    Zeroing the stored original too means weight decay or momentum on pruned entries can never
    bring a value back, and importance recomputed later sees them as 0.
    """
    p = _mask_param(module)
    # the stored weight, not module.weight: that would evaluate the parametrization (a full pass)
    weight = module.weight if p is None else module.parametrizations.weight.original
    mask = mask.reshape(weight.shape).to(device=weight.device, dtype=torch.bool)
    if p is None:
        # unsafe skips torch's shape/dtype check, which would evaluate the parametrization (a
        # weight-sized copy); WeightMask keeps shape and dtype by construction
        parametrize.register_parametrization(module, "weight", WeightMask(mask), unsafe=True)
    else:
        p.mask.copy_(mask)
    if not keeps_all(mask):  # an all-kept mask (the first apply) has nothing to zero
        original = module.parametrizations.weight.original
        with torch.no_grad():  # in place, as masked_fill_(~mask, 0) but without the ~mask copy
            zero = torch.zeros((), dtype=original.dtype, device=original.device)
            torch.where(mask, original, zero, out=original)


def keeps_all(mask: torch.Tensor) -> bool:
    """True when the boolean ``mask`` keeps every weight (count_nonzero: far faster than all)."""
    return int(torch.count_nonzero(mask)) == mask.numel()


def masked_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` as the forward pass sees it, not recomputed when the mask keeps all.

    Evaluating the parametrization writes a weight-sized copy; with an all-kept mask (a layer
    just wrapped for pruning) the stored original is that weight already, so it is returned
    itself: callers must not modify the result.
    """
    p = _mask_param(module)
    if p is None or len(module.parametrizations.weight) != 1 or not keeps_all(p.mask):
        return module.weight
    return module.parametrizations.weight.original


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of ``model`` whose weight carries a :class:`WeightMask`."""
    return {n: m for n, m in model.named_modules() if _mask_param(m) is not None}


def _own_class(module: nn.Module) -> None:
    """Give ``module`` a parametrized class of its own.

    parametrize makes one ``Parametrized<Layer>`` class per module, but ``copy.deepcopy`` keeps
    the class, so a copy and its original share it; ``remove_parametrizations`` deletes the
    ``weight`` property from that class, which would break the other model. A fresh copy of the
    class keeps the removal to this module.
    """
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def finalize(model: nn.Module) -> nn.Module:
    """Bake the masks into plain weights and drop the parametrizations (in place; returns model).

    Safe on a ``copy.deepcopy`` of a masked model: the original keeps its masks.
    """
    for module in masked_layers(model).values():
        _own_class(module)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
