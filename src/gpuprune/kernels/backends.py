"""Kernel backends: turn a packed weight into a callable layer forward.

A backend builds, once, a callable for one layer (kernel compiled, weights uploaded) that is then
called per forward. Each backend module registers its class in :data:`BACKENDS`; the modules are
imported lazily by :func:`get_backend` so that, e.g., a missing PyOpenCL only matters when the
OpenCL backend is asked for.

``variant`` is ``"dense"`` (every block: the same kernel's dense baseline), ``"tile"`` (work-group
tile skip, weight packed with ``target.tile_block()``) or ``"simd"`` (SIMD-group skip, packed with
``target.simd_block()``). A backend may use its own blocking for the dense variant.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels.format import BlockSparseWeight, block_for, full_grid
from gpuprune.registry import Registry

Forward = Callable[[Tensor], Tensor]
FLOAT32 = (torch.float32,)


class Backend(abc.ABC):
    """One way of executing packed layers (OpenCL, Triton, CPU, plain PyTorch reference)."""

    name: ClassVar[str]
    # parameter/activation dtypes the kernels compute in; compile() refuses models in others
    dtypes: ClassVar[tuple[torch.dtype, ...]] = FLOAT32
    # whether conv2d takes pool="floor"/"ceil": a 2x2 stride-2 max pool after the activation,
    # fused into the kernel's store (compile() fuses a following nn.MaxPool2d only then)
    fuses_maxpool: ClassVar[bool] = False
    # whether a conv2d forward takes ``residual=`` and ``residual_relu=`` (a residual block's
    # shortcut added, then a ReLU, in the kernel's store; compile fuses residual blocks only then)
    fuses_residual: ClassVar[bool] = False

    def max_pool(self, pool: nn.Module) -> nn.Module | None:
        """A faster stand-in for an ``nn.MaxPool2d`` that compile did not fuse into a conv, or
        None to keep PyTorch's (the default)."""
        return None

    def conv_chain(self, layers: list[Any]) -> Callable[[Tensor], Tensor | None] | None:
        """One callable running consecutive convolutions (this backend's conv2d forwards, each
        reading the one before's output) as one call, or None (the default: one call each).
        The callable returns None for an input it cannot take; the caller then runs the layers."""
        return None

    def block_chain(self, blocks: list[tuple[list[Any], Any, bool]]
                    ) -> Callable[[Tensor], Tensor | None] | None:  # fmt: skip
        """One callable running consecutive residual blocks as one call, or None (the default).
        A block is ``(path, shortcut, relu)``: this backend's conv2d forwards applied in turn
        (each with its own ReLU), the shortcut's forward or None for the input itself, and
        whether a ReLU follows the add. The callable returns None for an input it cannot take."""
        return None

    def check_available(self) -> None:  # noqa: B027 - optional hook, default: always available
        """Raise a :class:`UserError` naming the fix (setup step, other backend) if unusable."""

    @property
    def device(self) -> str:
        """Human-readable device this backend runs on."""
        return "cpu"

    @abc.abstractmethod
    def linear(
        self,
        packed: BlockSparseWeight,
        bias: Tensor | None,
        target: Target,
        *,
        variant: str,
        relu: bool = False,
    ) -> Forward:
        """A forward for ``y = x @ W.T + b`` (x: [B, K] float32) with the packed W [M, K]."""

    @abc.abstractmethod
    def conv2d(
        self,
        packed: BlockSparseWeight,
        bias: Tensor | None,
        target: Target,
        *,
        variant: str,
        geometry: ConvGeometry,
        relu: bool = False,
    ) -> Forward:
        """A forward for a groups=1 Conv2d of ``geometry``, NCHW float32 in and out."""


BACKENDS: Registry[type[Backend]] = Registry("backend")

# name -> module that registers it on import (kept lazy: optional dependencies)
_MODULES = {
    "reference": "gpuprune.kernels.reference",
    "opencl": "gpuprune.kernels.opencl",
    "cpu": "gpuprune.kernels.cpu",
    "triton": "gpuprune.kernels.triton",
}


def _import_backend(name: str) -> None:
    module = _MODULES.get(name)
    if module is None or name in BACKENDS:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        # Only a missing backend module is the user's business; a missing dependency inside
        # it is reported by check_available() with the install step.
        if err.name != module:
            raise


def backend_names() -> list[str]:
    """Every known backend name (registered or importable)."""
    for name in _MODULES:
        _import_backend(name)
    return BACKENDS.names()


def get_backend(name: str) -> Backend:
    """An instance of the backend ``name``; unknown names raise a UserError listing valid ones."""
    _import_backend(name)
    if name not in BACKENDS:
        backend_names()
    return BACKENDS.get(name)()


def check_variant(variant: str, packed: BlockSparseWeight, target: Target) -> None:
    """Raise a UserError when ``packed`` was not blocked the way ``variant`` on ``target`` skips."""
    want = block_for(target, variant)  # raises for an unknown variant
    if variant != "dense" and tuple(packed.block) != tuple(want):
        raise UserError(
            f"weight packed with block {tuple(packed.block)} but the {variant!r} kernel for target "
            f"{target.name!r} skips {want} blocks",
            f"pack it with gpuprune.kernels.pack_for(matrix, target, {variant!r})",
        )


def check_conv_shape(packed: BlockSparseWeight, geometry: ConvGeometry) -> None:
    """Raise a UserError when the packed [M, K] weight does not fit the convolution's K."""
    if packed.shape[1] != geometry.k:
        (kh, kw), c = geometry.kernel_size, geometry.in_channels
        raise UserError(
            f"packed weight has K={packed.shape[1]} but the Conv2d needs "
            f"in_channels*kh*kw={c}*{kh}*{kw}={geometry.k}",
            "pack gemm_view() of this very layer (the packed file does not match the model)",
        )


def check_input(
    x: Tensor, dims: int, channels: int, what: str, dtypes: tuple[torch.dtype, ...] = FLOAT32
) -> None:
    """Raise a UserError for an input a compiled layer cannot take (dtype, rank, channels)."""
    if x.dtype not in dtypes:
        names = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise UserError(
            f"compiled {what} takes {names} input, got {x.dtype}",
            "call x.float() before the layer"
            if dtypes == FLOAT32
            else f"convert the input to one of {names}",
        )
    if x.dim() != dims or x.shape[1] != channels:
        raise UserError(
            f"compiled {what} expects a {dims}-d input with {channels} channels/features at dim 1, "
            f"got shape {tuple(x.shape)}",
            "feed the input shape the original layer took",
        )


def for_variant(packed: BlockSparseWeight, target: Target, variant: str) -> BlockSparseWeight:
    """The weight a kernel walks: as packed, or for "dense" every block of the target's tiles."""
    check_variant(variant, packed, target)
    return full_grid(packed, target.tile_block()) if variant == "dense" else packed


class LayerClassBackend(Backend):
    """A backend whose forwards are layer classes built from the walked weight, bias and ReLU
    (plus the convolution geometry): subclasses only name the two classes."""

    linear_layer: ClassVar[type]  # called as (weight, bias, relu)
    # (weight, bias, relu, in_channels, kernel, stride, pad, dilation[, pool])
    conv_layer: ClassVar[type]

    def linear(
        self,
        packed: BlockSparseWeight,
        bias: Tensor | None,
        target: Target,
        *,
        variant: str,
        relu: bool = False,
    ) -> Forward:
        return self.linear_layer(for_variant(packed, target, variant), bias, relu)

    def conv2d(
        self,
        packed: BlockSparseWeight,
        bias: Tensor | None,
        target: Target,
        *,
        variant: str,
        geometry: ConvGeometry,
        relu: bool = False,
        pool: str | None = None,
    ) -> Forward:
        check_conv_shape(packed, geometry)
        if pool and not self.fuses_maxpool:
            raise ValueError(f"the {self.name} backend does not fuse a max pool")
        g = geometry
        extra = {"pool": pool} if pool else {}
        return self.conv_layer(
            for_variant(packed, target, variant), bias, relu, g.in_channels, g.kernel_size,
            g.stride, g.padding, g.dilation, **extra,
        )  # fmt: skip
