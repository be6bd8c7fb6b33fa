"""Drop-in inference layers that hold packed weights and run a backend's skip kernel."""

from __future__ import annotations

from torch import Tensor, nn

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.gemm import gemm_view
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels.backends import Backend
from gpuprune.kernels.format import BlockSparseWeight, pack_for


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
        variant: str, geometry: ConvGeometry, relu: bool = False,
    ) -> None:
        super().__init__(packed, bias, backend, target, variant, relu)
        self.geometry = geometry
        self.in_channels, self.out_channels = geometry.in_channels, packed.shape[0]
        self._run = backend.conv2d(
            packed, self.bias, target, variant=variant, geometry=geometry, relu=relu
        )

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, target: Target, backend: Backend, *, variant: str = "tile",
        relu: bool = False, weight: Tensor | None = None, bias: Tensor | None = None,
    ) -> SkipConv2d:
        """Pack ``conv`` (or the given folded ``weight``/``bias``) for ``variant`` on ``target``.

        Raises:
            UnsupportedLayerError: a grouped conv or a padding the kernels do not take.
        """
        geometry = ConvGeometry.of(conv)
        w = conv.weight if weight is None else weight
        b = conv.bias if weight is None else bias
        return cls(
            pack_for(gemm_view(w.detach()), target, variant), b, backend, target,
            variant=variant, geometry=geometry, relu=relu,
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
