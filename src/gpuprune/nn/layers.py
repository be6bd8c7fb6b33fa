"""Drop-in inference layers that hold packed weights and run a backend's skip kernel.

Each keeps the attributes code reads from the layer it replaces: ``weight`` (the masked dense
weight, rebuilt from the packed blocks on first read, read-only) and ``bias``, so modules that
read ``linear.weight`` themselves (``nn.TransformerEncoderLayer``'s fast path) keep working.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.gemm import from_gemm, gemm_view
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels.backends import Backend
from gpuprune.kernels.format import BlockSparseWeight, pack_for


def observed(modules: Iterable[nn.Module]) -> bool:
    """Whether a forward hook, on one of ``modules`` or a global one, expects to see their own
    outputs: then what compile joined (a run of convolutions, a residual block's tail) runs the
    modules one by one."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class _SkipLayer(nn.Module):
    """Shared parts: packed weight kept as buffers (so ``state_dict`` has it), the forward."""

    def __init__(
        self, packed: BlockSparseWeight, bias: Tensor | None, backend: Backend, target: Target,
        variant: str, relu: bool,
    ) -> None:
        super().__init__()
        self.packed = packed
        self.backend_name = backend.name
        self.target = target
        self.variant = variant
        self.relu = relu
        self.register_buffer("values", packed.values)
        self.register_buffer("row_ptr", packed.row_ptr)
        self.register_buffer("col_idx", packed.col_idx)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._run = None  # backend forward, built by subclasses
        self._weight_shape: tuple[int, ...] = packed.shape
        self._dense: Tensor | None = None  # `weight`, built on first read

    @property
    def skippable_fraction(self) -> float:
        return self.packed.skippable_fraction()

    def train(self, mode: bool = True) -> _SkipLayer:
        """eval() works; training mode is refused: the packed weights have no gradients, so a
        training loop would silently update only the dense layers."""
        if mode:
            raise UserError(
                "a compiled model cannot be trained (its skip layers hold packed, frozen weights)",
                "train the masked model (gpuprune.load() or the pruned model before compile), "
                "or bake its masks with gpuprune.finalize(), then compile again",
            )
        return super().train(False)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this on every submodule first: refuse in one line instead of
        # failing deep inside TorchScript on the backend's Python kernels.
        raise UserError(
            "torch.jit.script cannot compile gpuprune's skip layers (they call Python kernels)",
            "use torch.export.export or torch.compile on the compiled model, or script the "
            "masked model before gpuprune.compile",
        )

    @property
    def weight(self) -> Tensor:
        """The masked dense weight in the replaced layer's shape (a copy: edits do nothing);
        with a BatchNorm folded in when compile folded one."""
        dense = self._dense
        if dense is None or dense.device != self.values.device:
            packed = dataclasses.replace(self.packed, values=self.values.cpu(),
                                         row_ptr=self.row_ptr.cpu(), col_idx=self.col_idx.cpu())
            dense = from_gemm(packed.to_dense(), self._weight_shape).to(self.values.device)
            self._dense = dense  # fmt: skip
        return dense

    def forward(self, x: Tensor) -> Tensor:
        y = self._run(x)
        return y.to(x.device) if y.device != x.device else y

    def extra_repr(self) -> str:
        m, k = self.packed.shape
        return (
            f"gemm={m}x{k}, block={self.packed.block}, variant={self.variant}, "
            f"skippable={self.skippable_fraction:.3f}, backend={self.backend_name}, "
            f"target={self.target.name}, relu={self.relu}"
        )


def _as_2d(x: Tensor, geometry: ConvGeometry, conv1d: bool) -> Tensor:
    """A Conv1d input as [B, C, 1, L], and any pre-pad applied (F.pad, as torch pads it)."""
    x = x.unsqueeze(2) if conv1d else x
    if any(geometry.pre_pad):
        mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
        x = F.pad(x, geometry.pre_pad, mode=mode)
    return x


class SkipConv2d(_SkipLayer):
    """A Conv2d (or Conv1d, as H = 1) whose pruned weight blocks are skipped by the kernel.

    One group of ``groups=1``; :class:`SkipGroupedConv2d` runs a grouped conv as one per group.
    A ``pre_pad`` of the geometry (string, uneven or non-zero-mode padding) is applied first.
    With ``pool`` = "floor" or "ceil" (backends with ``fuses_maxpool`` only) the layer's output
    is that of a 2x2 stride-2 ``nn.MaxPool2d`` in that mode after it: the kernel pools in its
    store.

    Example:
        >>> layer = SkipConv2d.from_conv(conv, target, get_backend("opencl"), variant="tile")
    """

    def __init__(
        self, packed: BlockSparseWeight, bias: Tensor | None, backend: Backend, target: Target, *,
        variant: str, geometry: ConvGeometry, relu: bool = False, conv1d: bool = False,
        pool: str | None = None,
    ) -> None:
        super().__init__(packed, bias, backend, target, variant, relu)
        if geometry.groups != 1:
            raise ValueError("SkipConv2d runs one group; use SkipGroupedConv2d")
        if pool and conv1d:
            raise ValueError("a fused 2x2 max pool needs a Conv2d")
        self.geometry = geometry
        self.conv1d = conv1d
        self.pool = pool
        self.in_channels, self.out_channels = geometry.in_channels, packed.shape[0]
        (kh, kw) = geometry.kernel_size
        self._weight_shape = (self.out_channels, self.in_channels, *((kw,) if conv1d else (kh, kw)))
        extra = {"pool": pool} if pool else {}  # asked of backends that fuse it only
        # a plain conv2d of a backend whose store adds a residual (not pooled, no 1-D or pre-pad)
        self.fuses_residual = (backend.fuses_residual and not pool and not conv1d
                               and not any(geometry.pre_pad))  # fmt: skip
        self._run = backend.conv2d(
            packed, self.bias, target, variant=variant, geometry=geometry.kernel(), relu=relu,
            **extra,
        )

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(_as_2d(x, self.geometry, self.conv1d))
        return y.squeeze(2) if self.conv1d else y

    def with_residual(self, x: Tensor, residual: Tensor, relu: bool) -> Tensor:
        """``self(x) + residual``, then a ReLU when ``relu`` (a residual block's tail): added in
        the kernel's store on backends with ``fuses_residual``, as PyTorch ops otherwise (and
        whenever a hook on this layer must see its own output)."""
        if self.fuses_residual and not observed([self]):
            return self._run(x, residual=residual, residual_relu=relu)
        y = self(x) + residual
        return torch.relu(y) if relu else y

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", maxpool=2x2 {self.pool}" if self.pool else "")

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, target: Target, backend: Backend, *, variant: str = "tile",
        relu: bool = False, weight: Tensor | None = None, bias: Tensor | None = None,
    ) -> SkipConv2d:
        """Pack ``conv`` (or the given folded ``weight``/``bias``) for ``variant`` on ``target``.

        Raises:
            UnsupportedLayerError: not a Conv2d/Conv1d; ValueError: a grouped conv.
        """
        geometry = ConvGeometry.of(conv)
        w = conv.weight if weight is None else weight
        b = conv.bias if weight is None else bias
        return cls(
            pack_for(gemm_view(w.detach()), target, variant), b, backend, target,
            variant=variant, geometry=geometry, relu=relu, conv1d=isinstance(conv, nn.Conv1d),
        )


class SkipGroupedConv2d(nn.Module):
    """A grouped Conv2d/Conv1d run as one skip-kernel call per group (G GEMMs of [M/G, K])."""

    def __init__(self, parts: list[SkipConv2d], geometry: ConvGeometry, conv1d: bool = False
                 ) -> None:  # fmt: skip
        super().__init__()
        if len(parts) != geometry.groups:
            raise ValueError(f"{len(parts)} group layers for groups={geometry.groups}")
        self.groups = nn.ModuleList(parts)
        self.geometry = geometry
        self.conv1d = conv1d
        self.in_channels = geometry.in_channels
        self.out_channels = sum(p.out_channels for p in parts)

    @property
    def weight(self) -> Tensor:
        """The masked dense weight [C_out, C_in/G, kh, kw] (a copy)."""
        w = torch.cat([p.weight for p in self.groups])
        return w.squeeze(2) if self.conv1d else w

    @property
    def bias(self) -> Tensor | None:
        biases = [p.bias for p in self.groups]
        return None if biases[0] is None else torch.cat(biases)

    @property
    def skippable_fraction(self) -> float:
        sizes = [p.packed.grid[0] * p.packed.grid[1] for p in self.groups]
        kept = [p.packed.nnzb for p in self.groups]
        return 1.0 - sum(kept) / max(sum(sizes), 1)

    def forward(self, x: Tensor) -> Tensor:
        x = _as_2d(x, self.geometry, self.conv1d)
        xs = x.chunk(len(self.groups), dim=1)
        y = torch.cat([p(xi.contiguous()) for p, xi in zip(self.groups, xs, strict=True)], dim=1)
        return y.squeeze(2) if self.conv1d else y

    def extra_repr(self) -> str:
        return f"groups={len(self.groups)}, skippable={self.skippable_fraction:.3f}"


class SkipLinear(_SkipLayer):
    """An nn.Linear whose pruned weight blocks are skipped by the backend's kernel.

    ``folded_bn`` names the BatchNorm1d compile folded into it: that fold holds for [B, K]
    inputs only (on [B, L, K] a BatchNorm1d normalises dim 1, not the Linear's features), so
    other inputs are refused instead of computed wrongly.
    """

    def __init__(
        self, packed: BlockSparseWeight, bias: Tensor | None, backend: Backend, target: Target, *,
        variant: str, relu: bool = False, folded_bn: str | None = None,
    ) -> None:
        super().__init__(packed, bias, backend, target, variant, relu)
        self.out_features, self.in_features = packed.shape
        self.folded_bn = folded_bn
        self._run = backend.linear(packed, self.bias, target, variant=variant, relu=relu)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, target: Target, backend: Backend, *, variant: str = "tile",
        relu: bool = False,
    ) -> SkipLinear:
        """Pack ``linear`` for ``variant`` on ``target``."""
        packed = pack_for(linear.weight.detach(), target, variant)
        return cls(packed, linear.bias, backend, target, variant=variant, relu=relu)

    def forward(self, x: Tensor) -> Tensor:
        if self.folded_bn is not None and x.dim() != 2:
            raise UserError(
                f"this layer has {self.folded_bn} (a BatchNorm1d) folded in, which is right for "
                f"[batch, features] inputs only; got {x.dim()}-D",
                "run the uncompiled model for such inputs, or compile without this layer "
                "(methods= naming the layers to compile)",
            )
        if x.dim() > 2:  # nn.Linear accepts [..., K]; the kernel takes [B, K]
            lead = x.shape[:-1]
            return super().forward(x.reshape(-1, x.shape[-1])).reshape(*lead, self.out_features)
        return super().forward(x)


__all__ = ["SkipConv2d", "SkipGroupedConv2d", "SkipLinear"]
