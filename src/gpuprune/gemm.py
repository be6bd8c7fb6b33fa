"""Layers as GEMMs, and block arithmetic on the [M, K] weight matrix.

Convolution is lowered to ``Out[M, N] = W[M, K] x X[K, N]`` with ``M = C_out``,
``K = C_in * kh * kw`` and ``N = H_out * W_out * batch``. The one K order used everywhere is
``(kh, kw, c_in)`` with ``c_in`` fastest (:data:`K_ORDER`), i.e.
``weight.permute(0, 2, 3, 1).reshape(C_out, -1)``: the order of an NHWC implicit GEMM, where one
K block of a tile is one kernel tap of a run of input channels. A block then never disconnects
an input channel from its outputs at every tap at once, which the ``(c_in, kh, kw)`` order of
``weight.reshape`` and ``F.unfold`` did (a 32-wide block held 3.6 channels with all 9 taps:
docs/design.md, "GEMM view and K order"). Linear layers are ``W[out, in]`` as they are.
A Conv1d is a conv with kh = 1. A grouped conv's view ``[C_out, C_in/G * kh * kw]`` stacks its G
group GEMMs ``[C_out/G, C_in/G * kh * kw]`` along M (group g owns rows ``g*C_out/G`` onward); its
masks are chosen per group (see :mod:`gpuprune.prune.api`).

A bare weight (:class:`BareWeight`) is a weight parameter that is not a layer of its own:
``nn.MultiheadAttention``'s input projection. ``in_proj_weight`` [3E, E] is viewed as the three
GEMMs [E, E] of q, k and v stacked along M (``groups=3``, masked per projection like a grouped
conv); with kdim/vdim != embed_dim, ``q_proj_weight``, ``k_proj_weight`` and ``v_proj_weight`` are
three bare weights of one GEMM each. A bare weight is named ``<module>.<parameter>``.

A ``ConvTranspose2d`` (weight ``[C_in, C_out/G, kh, kw]``) is viewed as the Conv2d it equals on
its zero-stuffed input: weight ``[C_out, C_in/G, kh, kw]``, each group's slice transposed and the
kernel flipped (:func:`conv_layout`). Its GEMM is ``[C_out, C_in/G * kh * kw]``, so M is the
output channels and a block means what it means for a Conv2d; :class:`TransposedConv` is that
view for the pruner (masks in this layout, stored on the layer in its own).

Ragged edges: when M or K is not a multiple of the block, the last block row/column is partial
(``M % bm`` rows or ``K % bk`` columns). It is still one block: pruned or kept as a whole, scored on
its real elements only, and a kernel pads it with zeros.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from gpuprune.errors import UnsupportedLayerError

K_ORDER = "kh,kw,c_in"  # a conv's GEMM K order (module docstring); part of every stored mask's key
GEMM_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.ConvTranspose2d)
# nn.MultiheadAttention's bare projection weights, and how many GEMMs each stacks along M
MHA_WEIGHTS = {"in_proj_weight": 3, "q_proj_weight": 1, "k_proj_weight": 1, "v_proj_weight": 1}
# Layers with weights that gpuprune does not view as a GEMM: always named when left out.
WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.MultiheadAttention)


class BareWeight:
    """A weight parameter pruned and compiled as a layer: ``owner.<pname>`` (module docstring).

    Not an ``nn.Module`` (it is a view on its owner): ``.weight`` reads the owner's parameter,
    masked when a mask parametrizes it.
    """

    def __init__(self, owner: nn.Module, pname: str, groups: int = 1) -> None:
        self.owner, self.pname, self.groups = owner, pname, groups

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.owner, self.pname)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BareWeight) and other.owner is self.owner
                and other.pname == self.pname)  # fmt: skip

    def __hash__(self) -> int:
        return hash((id(self.owner), self.pname))

    def __repr__(self) -> str:
        return f"BareWeight({type(self.owner).__name__}.{self.pname}, groups={self.groups})"


def conv_layout(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A ConvTranspose2d weight [C_in, C_out/G, kh, kw] as its equal Conv2d's [C_out, C_in/G,
    kh, kw] (per group transposed, kernel flipped); a copy."""
    cin, cout_g, kh, kw = weight.shape
    w = weight.reshape(groups, cin // groups, cout_g, kh, kw).transpose(1, 2)
    return w.reshape(groups * cout_g, cin // groups, kh, kw).flip(-2, -1)


def transposed_layout(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of :func:`conv_layout`: [C_out, C_in/G, kh, kw] back to [C_in, C_out/G, kh, kw]."""
    cout, cin_g, kh, kw = weight.shape
    w = weight.flip(-2, -1).reshape(groups, cout // groups, cin_g, kh, kw).transpose(1, 2)
    return w.reshape(groups * cin_g, cout // groups, kh, kw)


class TransposedConv:
    """A ConvTranspose2d as the pruner sees it: ``.weight`` in the Conv2d layout of
    :func:`conv_layout` (module docstring). Not an ``nn.Module``: a view on ``module``."""

    def __init__(self, module: nn.ConvTranspose2d) -> None:
        self.module, self.groups = module, module.groups
        self.in_channels = module.in_channels

    @property
    def weight(self) -> torch.Tensor:
        return conv_layout(self.module.weight, self.groups)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TransposedConv) and other.module is self.module

    def __hash__(self) -> int:
        return hash(id(self.module))

    def __repr__(self) -> str:
        return f"TransposedConv({self.module!r})"


def _has_param(module: nn.Module, pname: str) -> bool:
    """Whether ``module`` holds parameter ``pname`` (plain or parametrized), without reading it."""
    return parametrize.is_parametrized(module, pname) or module._parameters.get(pname) is not None


def bare_weights(module: nn.Module | None, prefix: str = "") -> dict[str, BareWeight]:
    """{name: BareWeight} of ``module``'s bare GEMM weights (an nn.MultiheadAttention's input
    projection), named ``<prefix>.<parameter>``; empty for any other module."""
    if not isinstance(module, nn.MultiheadAttention):
        return {}
    return {
        f"{prefix}.{p}" if prefix else p: BareWeight(module, p, groups)
        for p, groups in MHA_WEIGHTS.items() if _has_param(module, p)
    }  # fmt: skip


def find_layer(model: nn.Module, name: str, modules: Mapping[str, nn.Module] | None = None
               ) -> nn.Module | BareWeight | None:  # fmt: skip
    """The module, or bare weight, that layer ``name`` of ``model`` names (None if none)."""
    modules = dict(model.named_modules()) if modules is None else modules
    if name in modules:
        return modules[name]
    owner, _, _ = name.rpartition(".")
    return bare_weights(modules.get(owner), owner).get(name)


def _check(module: nn.Module) -> None:
    if isinstance(module, (*GEMM_LAYERS, BareWeight, TransposedConv)):
        return
    raise UnsupportedLayerError(
        f"{type(module).__name__} has no GEMM view",
        "only nn.Conv1d, nn.Conv2d and nn.Linear layers can be pruned and compiled",
    )


def is_gemm_layer(module: nn.Module | BareWeight) -> bool:
    """True for layers gpuprune can view as a GEMM (Linear, Conv1d, Conv2d of any groups, and
    bare weights)."""
    return isinstance(module, (*GEMM_LAYERS, BareWeight, TransposedConv))


def groups_of(module: nn.Module | BareWeight) -> int:
    """How many GEMMs the layer's view stacks along M (a conv's ``groups``; 3 for an attention's
    in_proj_weight; 1 for Linear)."""
    if isinstance(module, BareWeight | TransposedConv):
        return module.groups
    return int(getattr(module, "groups", 1)) if isinstance(module, nn.modules.conv._ConvNd) else 1


def gemm_shape(module: nn.Module) -> tuple[int, int]:
    """(M, K) of the layer's weight as a GEMM operand."""
    _check(module)
    if isinstance(module, nn.ConvTranspose2d | TransposedConv):
        w = module.weight if isinstance(module, nn.ConvTranspose2d) else module.module.weight
        return int(w.shape[1]) * module.groups, int(w.shape[0]) // module.groups * int(
            w[0, 0].numel())  # fmt: skip
    w = module.weight
    return int(w.shape[0]), int(w[0].numel())


def gemm_view(module: nn.Module | BareWeight | TransposedConv | torch.Tensor) -> torch.Tensor:
    """The layer's weight as an [M, K] matrix in the K order ``(kh, kw, c_in)``: a copy for a
    conv with a kernel bigger than 1 (write back with :func:`from_gemm`), else a view."""
    if isinstance(module, nn.ConvTranspose2d):
        module = TransposedConv(module)
    w = module if isinstance(module, torch.Tensor) else (_check(module), module.weight)[1]
    if w.dim() > 2:  # [M, C, *kernel] -> [M, *kernel, C]
        w = w.movedim(1, -1)
    return w.reshape(w.shape[0], -1)


def from_gemm(matrix: torch.Tensor, like: nn.Module | BareWeight | torch.Tensor | torch.Size
              ) -> torch.Tensor:  # fmt: skip
    """Inverse of :func:`gemm_view`: an [M, K] matrix back in the weight's shape."""
    if isinstance(like, nn.ConvTranspose2d):
        like = TransposedConv(like)
    if isinstance(like, nn.Module | BareWeight | TransposedConv):
        _check(like)
        shape = like.weight.shape
    elif isinstance(like, torch.Tensor):
        shape = like.shape
    else:
        shape = torch.Size(like)
    m, k = shape[0], int(torch.Size(shape[1:]).numel())
    if tuple(matrix.shape) != (m, k):
        raise ValueError(f"matrix of shape {tuple(matrix.shape)} is not the GEMM view {(m, k)}")
    if len(shape) > 2:  # [M, *kernel, C] -> [M, C, *kernel]
        return matrix.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1).contiguous()
    return matrix.reshape(shape)


def weight_shaped(t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """``t`` given weight-shaped or as the [M, K] GEMM view, in the weight's ``shape``."""
    shape = torch.Size(shape)
    if t.shape == shape:
        return t
    if t.dim() != 2:
        raise ValueError(f"tensor of shape {tuple(t.shape)} is neither the weight's {tuple(shape)}"
                         " nor its GEMM view")  # fmt: skip
    return from_gemm(t, shape)


# ---- block arithmetic ---------------------------------------------------------------------------
def block_grid(shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    """Number of (row, k) blocks covering an [M, K] matrix, ragged edges included."""
    (m, k), (bm, bk) = shape, block
    return (-(-m // bm), -(-k // bk))


def _padded(matrix: torch.Tensor, block: tuple[int, int], value: float = 0.0) -> torch.Tensor:
    m, k = matrix.shape
    gm, gk = block_grid((m, k), block)
    pad_m, pad_k = gm * block[0] - m, gk * block[1] - k
    if pad_m or pad_k:
        matrix = torch.nn.functional.pad(matrix, (0, pad_k, 0, pad_m), value=value)
    return matrix


def to_blocks(matrix: torch.Tensor, block: tuple[int, int], pad: float = 0.0) -> torch.Tensor:
    """[M, K] -> [gm, gk, bm, bk], padding ragged edges with ``pad``."""
    bm, bk = block
    p = _padded(matrix, block, pad)
    gm, gk = p.shape[0] // bm, p.shape[1] // bk
    return p.reshape(gm, bm, gk, bk).permute(0, 2, 1, 3)


def block_reduce(matrix: torch.Tensor, block: tuple[int, int], op: str = "sum") -> torch.Tensor:
    """Reduce each block to one value: ``sum``, ``max`` (of values) or ``any`` (non-zero)."""
    if op == "any":
        return _block_any(matrix if matrix.dtype == torch.bool else matrix != 0, block)
    blocks = to_blocks(matrix.float(), block)
    if op == "sum":
        return blocks.sum(dim=(2, 3))
    if op == "max":
        return blocks.amax(dim=(2, 3))
    raise ValueError(f"unknown block reduction {op!r}")


def _block_any(nonzero: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """[gm, gk] bool: does the block hold a True? On bytes, one axis at a time (a float copy of
    a 100M-weight mask and a two-axis reduction took seconds)."""
    (m, k), (bm, bk) = nonzero.shape, block
    gm, gk = block_grid((m, k), block)
    if (gm * bm, gk * bk) != (m, k):
        padded = torch.zeros((gm * bm, gk * bk), dtype=torch.bool, device=nonzero.device)
        padded[:m, :k] = nonzero
        nonzero = padded
    blocks = nonzero.view(torch.uint8).reshape(gm, bm, gk, bk)
    return blocks.amax(dim=3).amax(dim=1) > 0


def block_sizes(shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """[gm, gk] count of real (unpadded) elements in each block."""
    ones = torch.ones(shape)
    return block_reduce(ones, block, "sum")


def expand_blocks(
    block_mask: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]
) -> torch.Tensor:
    """A [gm, gk] block mask as the element mask of an [M, K] matrix (ragged edges cropped)."""
    (gm, gk), (bm, bk) = block_mask.shape, block
    full = block_mask[:, None, :, None].expand(gm, bm, gk, bk).reshape(gm * bm, gk * bk)
    return full[: shape[0], : shape[1]]  # one copy (the reshape), not two repeat_interleaves
