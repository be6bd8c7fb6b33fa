"""Layers as GEMMs, and block arithmetic on the [M, K] weight matrix.

Convolution is lowered to ``Out[M, N] = W[M, K] x X[K, N]`` with ``M = C_out``,
``K = C_in * kh * kw`` and ``N = H_out * W_out * batch``. The one K order used everywhere is
``(c_in, kh, kw)`` with ``c_in`` slowest, i.e. ``weight.reshape(C_out, -1)``, which is also the row
order of ``torch.nn.functional.unfold`` (im2col). Linear layers are ``W[out, in]`` as they are.
A Conv1d is a conv with kh = 1. A grouped conv's view ``[C_out, C_in/G * kh * kw]`` stacks its G
group GEMMs ``[C_out/G, C_in/G * kh * kw]`` along M (group g owns rows ``g*C_out/G`` onward); its
masks are chosen per group (see :mod:`gpuprune.prune.api`).

Ragged edges: when M or K is not a multiple of the block, the last block row/column is partial
(``M % bm`` rows or ``K % bk`` columns). It is still one block: pruned or kept as a whole, scored on
its real elements only, and a kernel pads it with zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from gpuprune.errors import UnsupportedLayerError

GEMM_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
# Layers with weights that gpuprune does not view as a GEMM: always named when left out.
WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.MultiheadAttention)


def _check(module: nn.Module) -> None:
    if isinstance(module, GEMM_LAYERS):
        return
    raise UnsupportedLayerError(
        f"{type(module).__name__} has no GEMM view",
        "only nn.Conv1d, nn.Conv2d and nn.Linear layers can be pruned and compiled",
    )


def is_gemm_layer(module: nn.Module) -> bool:
    """True for layers gpuprune can view as a GEMM (Linear, Conv1d, Conv2d of any groups)."""
    return isinstance(module, GEMM_LAYERS)


def groups_of(module: nn.Module) -> int:
    """How many GEMMs the layer's view stacks along M (a conv's ``groups``; 1 for Linear)."""
    return int(getattr(module, "groups", 1)) if isinstance(module, nn.modules.conv._ConvNd) else 1


def gemm_shape(module: nn.Module) -> tuple[int, int]:
    """(M, K) of the layer's weight as a GEMM operand."""
    _check(module)
    w = module.weight
    return int(w.shape[0]), int(w[0].numel())


def gemm_view(module: nn.Module | torch.Tensor) -> torch.Tensor:
    """The layer's weight as an [M, K] matrix (a view sharing storage with the weight)."""
    w = module if isinstance(module, torch.Tensor) else (_check(module), module.weight)[1]
    return w.reshape(w.shape[0], -1)


def from_gemm(matrix: torch.Tensor, like: nn.Module | torch.Tensor | torch.Size) -> torch.Tensor:
    """Inverse of :func:`gemm_view`: an [M, K] matrix back in the weight's shape."""
    if isinstance(like, nn.Module):
        _check(like)
        shape = like.weight.shape
    elif isinstance(like, torch.Tensor):
        shape = like.shape
    else:
        shape = torch.Size(like)
    m, k = shape[0], int(torch.Size(shape[1:]).numel())
    if tuple(matrix.shape) != (m, k):
        raise ValueError(f"matrix of shape {tuple(matrix.shape)} is not the GEMM view {(m, k)}")
    return matrix.reshape(shape)


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
