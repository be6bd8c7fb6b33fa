"""One layer's execution geometry: what a latency measurement of it depends on."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gpuprune.errors import UserError
from gpuprune.gemm import BareWeight, gemm_shape
from gpuprune.geometry import ConvGeometry


@dataclass(frozen=True)
class LayerGeometry:
    """A Conv2d (groups=1) or Linear layer as ``Out[M, N] = W[M, K] x X[K, N]`` at a batch."""

    name: str  # layer name (not part of the cache key: equal shapes share measurements)
    m: int  # output channels / features
    k: int  # in_channels * kh * kw, or in_features
    batch: int = 1
    in_hw: tuple[int, int] = (1, 1)  # input height and width (conv); (1, 1) for linear
    conv: ConvGeometry | None = None  # the convolution; None for a linear layer
    # the 2x2 max pool a backend that fuses pools runs in this conv's store ("floor"/"ceil"):
    # compile() fuses it, so the layer's measured cost must include it
    pool: str | None = None

    def __post_init__(self) -> None:
        if min(self.m, self.k, self.batch, *self.in_hw) < 1:
            raise UserError(
                f"layer {self.name}: sizes must be >= 1 (m={self.m}, k={self.k}, "
                f"batch={self.batch}, in_hw={self.in_hw})",
                "pass positive sizes",
            )
        if self.conv is not None and self.conv.k != self.k:
            raise UserError(f"layer {self.name}: k={self.k} but the conv needs {self.conv.k}",
                            "pass k = in_channels * kh * kw")  # fmt: skip

    @property
    def kind(self) -> str:
        """"conv" or "linear"."""
        return "linear" if self.conv is None else "conv"

    @property
    def in_channels(self) -> int:
        return self.k if self.conv is None else self.conv.in_channels

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
        if self.conv is not None:
            c = self.conv
            parts += [
                "hw{}x{}".format(*self.in_hw),
                "ks{}x{}".format(*c.kernel_size),
                "s{}x{}".format(*c.stride),
                "p{}x{}".format(*c.padding),
                "d{}x{}".format(*c.dilation),
            ]
        if self.pool is not None:
            parts.append(f"pool-{self.pool}")
        return "-".join(parts)

    def with_batch(self, batch: int) -> LayerGeometry:
        """The same layer at another batch size."""
        from dataclasses import replace

        return replace(self, batch=batch)


def geometry_of(
    name: str, module: nn.Module, in_hw: tuple[int, int] | None = None, batch: int = 1,
    pool: str | None = None,
) -> LayerGeometry:
    """The geometry of a Conv2d/Linear ``module`` fed ``in_hw`` inputs (conv) at ``batch``.

    Raises:
        UserError: the module is not a groups=1 Conv2d or a Linear, or a conv lacks ``in_hw``.
    """
    if isinstance(module, nn.Linear | BareWeight):  # an attention's q/k/v: one [3E, E] GEMM
        m, k = gemm_shape(module)
        return LayerGeometry(name, m, k, batch)
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        if in_hw is None:
            raise UserError(
                f"layer {name}: the input size of the convolution is unknown",
                "pass in_hw=(H, W) or run the model once (layer_specs measures it)",
            )
        m, k = gemm_shape(module)
        try:
            conv = ConvGeometry.of(module)
        except UserError as err:
            raise UserError(f"layer {name}: {err.problem}", err.fix) from None
        return LayerGeometry(name, m, k, batch, tuple(in_hw), conv, pool)
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
    pools = fused_pools(model)
    out = {}
    for name, mod in layers.items():
        if isinstance(mod, nn.Conv2d) and mod.groups != 1:
            continue
        hw = sizes.get(name, (1, None))[1]
        if isinstance(mod, nn.Conv2d) and hw is None:
            continue  # never reached by the forward pass: nothing to time
        try:
            out[name] = geometry_of(name, mod, hw, batch, pool=pools.get(name))
        except UserError:  # e.g. padding="same": no skip kernel runs it, nothing to time
            continue
    return out


def fused_pools(model: nn.Module) -> dict[str, str]:
    """{conv name: "floor" | "ceil"} for each conv whose following max pool compile() fuses on
    a backend that pools in its store (the same chains compile uses: gpuprune.nn.fold)."""
    from gpuprune.nn.fold import find_chains

    modules = dict(model.named_modules())
    return {name: "ceil" if modules[c.pool].ceil_mode else "floor"
            for name, c in find_chains(model).items() if c.pool is not None}  # fmt: skip
