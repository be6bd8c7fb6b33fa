"""Drop-in inference layers that hold packed weights and run a backend's skip kernel."""

from __future__ import annotations

from torch import Tensor, nn

from gpuprune.arch import Target
from gpuprune.errors import UnsupportedLayerError
from gpuprune.gemm import gemm_view
from gpuprune.kernels.backends import Backend
from gpuprune.kernels.format import BlockSparseWeight, pack_for


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


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

    @property
    def skippable_fraction(self) -> float:
        return self.packed.skippable_fraction()

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


class SkipConv2d(_SkipLayer):
    """A groups=1 Conv2d whose pruned weight blocks are skipped by the backend's kernel.

    Example:
        >>> layer = SkipConv2d.from_conv(conv, target, get_backend("opencl"), variant="tile")
    """

    def __init__(
        self, packed: BlockSparseWeight, bias: Tensor | None, backend: Backend, target: Target, *,
        variant: str, in_channels: int, kernel_size: tuple[int, int], stride: tuple[int, int],
        padding: tuple[int, int], dilation: tuple[int, int], relu: bool = False,
    ) -> None:
        super().__init__(packed, bias, backend, target, variant, relu)
        self.in_channels, self.out_channels = in_channels, packed.shape[0]
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self._run = backend.conv2d(
            packed, self.bias, target, variant=variant, in_channels=in_channels,
            kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, relu=relu,
        )

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, target: Target, backend: Backend, *, variant: str = "tile",
        relu: bool = False, weight: Tensor | None = None, bias: Tensor | None = None,
    ) -> SkipConv2d:
        """Pack ``conv`` (or the given folded ``weight``/``bias``) for ``variant`` on ``target``."""
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            raise UnsupportedLayerError(
                f"cannot compile {type(conv).__name__}"
                + (f" with groups={conv.groups}" if isinstance(conv, nn.Conv2d) else ""),
                "only nn.Conv2d (groups=1) and nn.Linear are compiled; leave it dense",
            )
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"Conv2d padding={conv.padding!r}, padding_mode={conv.padding_mode!r} is not "
                "supported by the skip kernels",
                "use integer zero padding, or leave the layer dense",
            )
        w = conv.weight if weight is None else weight
        b = conv.bias if weight is None else bias
        return cls(
            pack_for(gemm_view(w.detach()), target, variant), b, backend, target,
            variant=variant, in_channels=conv.in_channels, kernel_size=conv.kernel_size,
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation, relu=relu,
        )


class SkipLinear(_SkipLayer):
    """An nn.Linear whose pruned weight blocks are skipped by the backend's kernel."""

    def __init__(
        self, packed: BlockSparseWeight, bias: Tensor | None, backend: Backend, target: Target, *,
        variant: str, relu: bool = False,
    ) -> None:
        super().__init__(packed, bias, backend, target, variant, relu)
        self.out_features, self.in_features = packed.shape
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
        if x.dim() > 2:  # nn.Linear accepts [..., K]; the kernel takes [B, K]
            lead = x.shape[:-1]
            return super().forward(x.reshape(-1, x.shape[-1])).reshape(*lead, self.out_features)
        return super().forward(x)


__all__ = ["SkipConv2d", "SkipLinear"]
