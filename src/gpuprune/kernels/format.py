"""The compiled weight format: per row-block the kept K blocks, packed in kernel reading order.

A masked [M, K] GEMM weight is cut into ``bm x bk`` blocks (ragged last row/column blocks padded
with zeros). A block is kept unless it is entirely zero, so any mask can be compiled for any
block shape: a model pruned for one GPU can be packed for another and its skippable fraction
measured there.

The two pruning techniques use the same format with different blocks:

* tile skipping (technique A): ``block = (MWG, KWG)``; a row-block is a work-group's row tile and
  its kept blocks are the K slabs the work-group stages in local memory;
* SIMD-group skipping (technique B): ``block = (R, simd_k)``; a row-block is one SIMD row-group
  and its kept blocks are the k-vectors that group walks.

``values[j]`` is the ``bm x bk`` block ``(i, col_idx[j])`` for ``row_ptr[i] <= j < row_ptr[i+1]``,
row-major inside the block, so a kernel streams ``values`` linearly as it walks its list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.gemm import block_grid, to_blocks
from gpuprune.plan import SKIP_KERNELS

VARIANTS = ("dense", *SKIP_KERNELS)  # kernel variants; "dense" walks every block


@dataclass(frozen=True)
class BlockSparseWeight:
    """Row-block compressed (BSR-like) weight: per row-block the list of kept K blocks."""

    shape: tuple[int, int]  # (M, K) of the GEMM view
    block: tuple[int, int]  # (bm, bk): (MWG, KWG) for tile skipping, (R, simd_k) for SIMD groups
    row_ptr: torch.Tensor  # int32 [gm + 1]; kept blocks of row-block i: row_ptr[i]:row_ptr[i+1]
    col_idx: torch.Tensor  # int32 [nnzb]; k-block index, ascending within a row-block
    values: torch.Tensor  # float32 [nnzb, bm, bk]; kept blocks, zero-padded at ragged edges

    @property
    def grid(self) -> tuple[int, int]:
        """(gm, gk): number of row-blocks and K blocks, ragged edges included."""
        return block_grid(self.shape, self.block)

    @property
    def nnzb(self) -> int:
        """Number of kept blocks."""
        return int(self.col_idx.numel())

    def kept_per_row_block(self) -> torch.Tensor:
        """int64 [gm]: kept blocks of each row-block."""
        return (self.row_ptr[1:] - self.row_ptr[:-1]).long()

    def is_balanced(self) -> bool:
        """True when every row-block keeps the same number of blocks (Yao-style balance)."""
        kept = self.kept_per_row_block()
        return bool((kept == kept[0]).all()) if kept.numel() else True

    def skippable_fraction(self) -> float:
        """Pruned blocks' share of the padded matrix area (0 = dense, 1 = all pruned)."""
        gm, gk = self.grid
        total = gm * gk
        return 1.0 - self.nnzb / total if total else 0.0

    def to_dense(self) -> torch.Tensor:
        """The [M, K] float32 matrix the packed blocks describe (pruned blocks as zeros)."""
        (m, k), (bm, bk), (gm, gk) = self.shape, self.block, self.grid
        blocks = torch.zeros(gm * gk, bm, bk, dtype=self.values.dtype)
        rows = torch.repeat_interleave(torch.arange(gm), self.kept_per_row_block())
        blocks[rows * gk + self.col_idx.long()] = self.values
        full = blocks.reshape(gm, gk, bm, bk).permute(0, 2, 1, 3).reshape(gm * bm, gk * bk)
        return full[:m, :k].contiguous()


def _check_matrix(matrix: torch.Tensor) -> None:
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
        got = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise UserError(
            f"pack() needs an [M, K] matrix, got {got}",
            "pass gemm_view(layer) of a Conv2d/Linear layer",
        )
    if not matrix.dtype.is_floating_point:
        raise UserError(
            f"pack() needs a floating-point weight, got {matrix.dtype}",
            "convert the layer to float32 (model.float())",
        )


def pack(matrix: torch.Tensor, block: tuple[int, int]) -> BlockSparseWeight:
    """Keep a block unless it is entirely zero (so any mask can be compiled for any target).

    Args:
        matrix: the [M, K] GEMM view of a (masked) weight; any float dtype, stored as float32.
        block: (bm, bk) block shape, e.g. ``target.tile_block()`` or ``target.simd_block()``.

    Returns:
        The packed weight; ``pack(w, b).to_dense()`` equals ``w`` (as float32).
    """
    _check_matrix(matrix)
    bm, bk = int(block[0]), int(block[1])
    if bm < 1 or bk < 1:
        raise UserError(f"block {block} must be positive", "use e.g. target.tile_block()")
    m, k = int(matrix.shape[0]), int(matrix.shape[1])
    w = matrix.detach().to(device="cpu", dtype=torch.float32)
    blocks = to_blocks(w, (bm, bk))  # [gm, gk, bm, bk]
    gm, gk = blocks.shape[:2]
    keep = (blocks != 0).flatten(2).any(dim=2)  # [gm, gk]
    counts = keep.sum(dim=1)
    row_ptr = torch.zeros(gm + 1, dtype=torch.int32)
    row_ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
    rows, cols = keep.nonzero(as_tuple=True)  # row-major order: ascending k within a row-block
    values = blocks[rows, cols].contiguous()
    return BlockSparseWeight(
        shape=(m, k),
        block=(bm, bk),
        row_ptr=row_ptr,
        col_idx=cols.to(torch.int32).contiguous(),
        values=values,
    )


def full_grid(packed: BlockSparseWeight, block: tuple[int, int]) -> BlockSparseWeight:
    """``packed`` re-blocked with every block kept (pruned ones as zeros): the dense baseline
    that runs the very same kernel, walking all blocks."""
    blocks = to_blocks(packed.to_dense(), block)  # [gm, gk, bm, bk]
    gm, gk = blocks.shape[:2]
    return BlockSparseWeight(
        shape=packed.shape,
        block=tuple(block),
        row_ptr=torch.arange(gm + 1, dtype=torch.int32) * gk,
        col_idx=torch.arange(gk, dtype=torch.int32).repeat(gm),
        values=blocks.reshape(gm * gk, *block).contiguous(),
    )


def block_for(target: Target, variant: str) -> tuple[int, int]:
    """Block a variant skips on ``target``: (MWG, KWG) for tile/dense, (R, simd_k) for simd."""
    if variant not in VARIANTS:
        raise UserError(
            f"unknown kernel variant {variant!r}", f"choose one of: {', '.join(VARIANTS)}"
        )
    return target.simd_block() if variant == "simd" else target.tile_block()


def pack_for(matrix: torch.Tensor, target: Target, variant: str) -> BlockSparseWeight:
    """:func:`pack` with the block of ``variant`` on ``target``."""
    return pack(matrix, block_for(target, variant))
