"""Masks as ``torch.nn.utils.parametrize`` parametrizations of ``weight``.

``module.weight`` becomes ``where(mask, original, 0)``: the model trains as usual (gradients
reach only kept weights), the boolean mask is a buffer (so optimizers never touch it and it is in
``state_dict`` as ``<layer>.parametrizations.weight.0.mask``), and :func:`finalize` bakes the zeros
into a plain weight. A bare weight (:class:`~gpuprune.gemm.BareWeight`, e.g.
``nn.MultiheadAttention.in_proj_weight``) is parametrized the same way on its owner, under its
own name (``<owner>.parametrizations.in_proj_weight.0.mask``). A ConvTranspose2d's mask is stored
in its weight's own layout; through its :class:`~gpuprune.gemm.TransposedConv` view it is read
and set in the Conv2d layout the pruner works in.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from gpuprune.gemm import (
    BareWeight,
    TransposedConv,
    bare_weights,
    conv_layout,
    transposed_layout,
    weight_shaped,
)

Layer = nn.Module | BareWeight | TransposedConv


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


def _slot(module: Layer) -> tuple[nn.Module, str]:
    """(the module holding the weight, the weight's parameter name)."""
    if isinstance(module, TransposedConv):
        return module.module, "weight"
    return (module.owner, module.pname) if isinstance(module, BareWeight) else (module, "weight")


def gemm_layout(module: Layer, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like the layer's stored weight, in the layout the pruner sees."""
    return conv_layout(tensor, module.groups) if isinstance(module, TransposedConv) else tensor


def _mask_param(module: Layer) -> WeightMask | None:
    owner, pname = _slot(module)
    if not parametrize.is_parametrized(owner, pname):
        return None
    for p in owner.parametrizations[pname]:
        if isinstance(p, WeightMask):
            return p
    return None


def stored_weight(module: Layer) -> torch.Tensor:
    """The weight's leaf parameter: ``original`` under a parametrization, else the weight."""
    owner, pname = _slot(module)
    if parametrize.is_parametrized(owner, pname):
        return owner.parametrizations[pname].original
    return getattr(owner, pname)


def stored_layout(module: Layer, mask: torch.Tensor) -> torch.Tensor:
    """A mask given in the pruner's layout (weight-shaped or [M, K]) in the stored weight's."""
    stored = stored_weight(module).shape
    if isinstance(module, TransposedConv):
        cin, cout_g, *kernel = stored
        shape = (cout_g * module.groups, cin // module.groups, *kernel)
        return transposed_layout(weight_shaped(mask, shape), module.groups)
    return weight_shaped(mask, stored)


def mask_buffer(module: Layer) -> torch.Tensor | None:
    """The mask buffer itself, in the stored weight's layout (edit it to try a mask without
    zeroing the stored weight, as :func:`set_mask` does)."""
    p = _mask_param(module)
    return None if p is None else p.mask


def get_mask(module: Layer) -> torch.Tensor | None:
    """The boolean keep-mask (weight-shaped) of a layer, or None if it is not masked."""
    p = _mask_param(module)
    return None if p is None else gemm_layout(module, p.mask)


def set_mask(module: Layer, mask: torch.Tensor) -> None:
    """Mask ``module.weight`` (adding the parametrization once) and zero the pruned originals.

    Zeroing the stored original too means weight decay or momentum on pruned entries can never
    bring a value back, and importance recomputed later sees them as 0.
    """
    p = _mask_param(module)
    owner, pname = _slot(module)
    # the stored weight, not module.weight: that would evaluate the parametrization (a full pass)
    weight = stored_weight(module)
    mask = stored_layout(module, mask).reshape(weight.shape)
    mask = mask.to(device=weight.device, dtype=torch.bool)
    if p is None:
        # unsafe skips torch's shape/dtype check, which would evaluate the parametrization (a
        # weight-sized copy); WeightMask keeps shape and dtype by construction
        parametrize.register_parametrization(owner, pname, WeightMask(mask), unsafe=True)
    else:
        p.mask.copy_(mask)
    if not keeps_all(mask):  # an all-kept mask (the first apply) has nothing to zero
        original = stored_weight(module)
        with torch.no_grad():  # in place, as masked_fill_(~mask, 0) but without the ~mask copy
            zero = torch.zeros((), dtype=original.dtype, device=original.device)
            torch.where(mask, original, zero, out=original)


def keeps_all(mask: torch.Tensor) -> bool:
    """True when the boolean ``mask`` keeps every weight (count_nonzero: far faster than all)."""
    return int(torch.count_nonzero(mask)) == mask.numel()


def masked_weight(module: Layer) -> torch.Tensor:
    """``module.weight`` as the forward pass sees it, not recomputed when the mask keeps all.

    Evaluating the parametrization writes a weight-sized copy; with an all-kept mask (a layer
    just wrapped for pruning) the stored original is that weight already, so it is returned
    itself: callers must not modify the result. Views (bare weights, transposed convs) are
    read through ``.weight`` as they are.
    """
    p = _mask_param(module)
    if (p is None or not isinstance(module, nn.Module)
            or len(module.parametrizations.weight) != 1 or not keeps_all(p.mask)):  # fmt: skip
        return module.weight
    return module.parametrizations.weight.original


def masked_layers(model: nn.Module) -> dict[str, Layer]:
    """Every module of ``model`` whose weight, and every bare weight, that carries a
    :class:`WeightMask`, in module order."""
    out: dict[str, Layer] = {}
    for name, module in model.named_modules():
        if _mask_param(module) is not None:
            out[name] = module
        out.update({n: b for n, b in bare_weights(module, name).items()
                    if _mask_param(b) is not None})  # fmt: skip
    return out


def weight_key(name: str, module: Layer) -> str:
    """The state-dict key of layer ``name``'s weight: ``<layer>.weight``, or a bare weight's own
    name (``attn.in_proj_weight``)."""
    return name if isinstance(module, BareWeight) else f"{name}.weight"


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
    owned: set[int] = set()
    for module in masked_layers(model).values():
        owner, pname = _slot(module)
        if id(owner) not in owned:  # once per module: a second copy would lose the first's
            owned.add(id(owner))
            _own_class(owner)
        parametrize.remove_parametrizations(owner, pname, leave_parametrized=True)
    return model
