"""One layer's execution geometry: what a latency measurement of it depends on."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import nn

from gpuprune.errors import UserError
from gpuprune.gemm import gemm_shape
from gpuprune.geometry import ConvGeometry


@dataclass(frozen=True)
class LayerGeometry:
    """A Conv2d (groups=1) or Linear layer as ``Out[M, N] = W[M, K] x X[K, N]`` at a batch."""

    name: str  # layer name (not part of the cache key: equal shapes share measurements)
    kind: str  # "conv" or "linear"
    m: int  # output channels / features
    k: int  # in_channels * kh * kw, or in_features
    in_channels: int
    batch: int = 1
    in_hw: tuple[int, int] = (1, 1)  # input height and width (conv); (1, 1) for linear
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if self.kind not in ("conv", "linear"):
            raise UserError(f"layer kind {self.kind!r} is unknown", "use 'conv' or 'linear'")
        if min(self.m, self.k, self.in_channels, self.batch, *self.in_hw) < 1:
            raise UserError(
                f"layer {self.name}: sizes must be >= 1 (m={self.m}, k={self.k}, "
                f"batch={self.batch}, in_hw={self.in_hw})",
                "pass positive sizes",
            )

    @functools.cached_property
    def conv(self) -> ConvGeometry | None:
        """The convolution's geometry (None for linear)."""
        if self.kind == "linear":
            return None
        return ConvGeometry(self.in_channels, self.kernel_size, self.stride, self.padding,
                            self.dilation)  # fmt: skip

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output height and width (1, 1 for linear)."""
        return (1, 1) if self.conv is None else self.conv.out_hw(*self.in_hw)

    @property
    def n(self) -> int:
        """GEMM columns: batch x output positions."""
        ho, wo = self.out_hw
        return self.batch * ho * wo

    @property
    def flops(self) -> int:
        """Dense multiply-adds x 2 for the whole batch."""
        return 2 * self.m * self.k * self.n

    def key(self) -> str:
        """Everything that decides the layer's run time, as a short string (cache key part)."""
        parts = [self.kind, f"m{self.m}", f"k{self.k}", f"c{self.in_channels}", f"b{self.batch}"]
        if self.kind == "conv":
            parts += [
                "hw{}x{}".format(*self.in_hw),
                "ks{}x{}".format(*self.kernel_size),
                "s{}x{}".format(*self.stride),
                "p{}x{}".format(*self.padding),
                "d{}x{}".format(*self.dilation),
            ]
        return "-".join(parts)

    def with_batch(self, batch: int) -> LayerGeometry:
        """The same layer at another batch size."""
        from dataclasses import replace

        return replace(self, batch=batch)


def geometry_of(
    name: str, module: nn.Module, in_hw: tuple[int, int] | None = None, batch: int = 1
) -> LayerGeometry:
    """The geometry of a Conv2d/Linear ``module`` fed ``in_hw`` inputs (conv) at ``batch``.

    Raises:
        UserError: the module is not a groups=1 Conv2d or a Linear, or a conv lacks ``in_hw``.
    """
    if isinstance(module, nn.Linear):
        m, k = gemm_shape(module)
        return LayerGeometry(name, "linear", m, k, k, batch)
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        if in_hw is None:
            raise UserError(
                f"layer {name}: the input size of the convolution is unknown",
                "pass in_hw=(H, W) or run the model once (layer_specs measures it)",
            )
        m, k = gemm_shape(module)
        pad = module.padding
        if isinstance(pad, str):
            raise UserError(
                f"layer {name}: padding={pad!r} is not supported", "use integer padding"
            )
        return LayerGeometry(
            name, "conv", m, k, module.in_channels, batch, tuple(in_hw),
            tuple(module.kernel_size), tuple(module.stride), tuple(pad), tuple(module.dilation),
        )  # fmt: skip
    raise UserError(
        f"layer {name} is a {type(module).__name__}, not a groups=1 Conv2d or a Linear",
        "measure only GEMM layers (gpuprune.gemm.is_gemm_layer)",
    )


def model_geometries(
    model: nn.Module,
    batch: int = 1,
    input_size: tuple[int, ...] | None = None,
    names: list[str] | None = None,
) -> dict[str, LayerGeometry]:
    """Geometry of every GEMM layer of ``model`` (one dummy forward pass finds input sizes)."""
    from gpuprune.prune.layers import gemm_layers, measure_positions

    layers = gemm_layers(model)
    if names is not None:
        layers = {n: layers[n] for n in names if n in layers}
    sizes = measure_positions(model, layers, input_size)
    out = {}
    for name, mod in layers.items():
        if isinstance(mod, nn.Conv2d) and mod.groups != 1:
            continue
        hw = sizes.get(name, (1, None))[1]
        if isinstance(mod, nn.Conv2d) and hw is None:
            continue  # never reached by the forward pass: nothing to time
        out[name] = geometry_of(name, mod, hw, batch)
    return out
