"""Pack a masked layer's weights into only what it keeps, and unpack them exactly.

A pruned file stores each masked layer as a few tensors named ``packed:<layer>:<part>``, over the
layer's GEMM view ``[M, K]`` (the weight as ``[out, *kernel, in]`` reshaped to ``[out, -1]``: a
conv's K order ``(kh, kw, c_in)``, :data:`gpuprune.gemm.K_ORDER`, so a tile is a stored block):

* ``shape``: int64, the weight's shape (``M`` is its first size, ``K`` the product of the rest);
* block encoding (the mask is whole blocks of the plan's ``bm x bk``, as tile/simd/filter give):
  ``blocks`` (bool ``[ceil(M/bm), ceil(K/bk)]``, the kept blocks) and ``values`` (float
  ``[kept blocks, bm, bk]``, row-major over the grid; edge blocks zero-padded);
* bit encoding (any other mask, e.g. unstructured or N:M): ``bits`` (uint8, the mask's bits,
  ``ceil(M*K/8)`` bytes, little-endian within a byte) and ``values`` (float ``[kept weights]``, in
  row-major order of the GEMM view).
* ``bare`` (bool ``[1]``, only for a bare weight such as ``attn.in_proj_weight``): the layer name
  is the weight's own state-dict key, not ``<layer>.weight``.

The encoding is chosen per layer; unpacking restores the mask and the masked weight bit for bit
(pruned weights are +0.0, as the mask parametrization makes them). Malformed parts raise a
one-line :class:`UserError` naming the layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from gpuprune.errors import UserError
from gpuprune.gemm import from_gemm, gemm_view

PREFIX = "packed:"
FIX = "save the model again with save_pruned() or `gpuprune prune`"
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def _key(layer: str, part: str) -> str:
    return f"{PREFIX}{layer}:{part}"


def _is_blocky(mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor | None:
    """The kept-block grid if ``mask`` is made of whole ``block``s, else None."""
    bm, bk = block
    m, k = mask.shape
    gm, gk = math.ceil(m / bm), math.ceil(k / bk)
    padded = F.pad(mask, (0, gk * bk - k, 0, gm * bm - m))
    tiles = padded.reshape(gm, bm, gk, bk)
    grid = tiles.any(dim=(1, 3))
    inside = F.pad(torch.ones_like(mask), (0, gk * bk - k, 0, gm * bm - m)).reshape(gm, bm, gk, bk)
    # a kept block must keep every weight inside the matrix (padding is never kept)
    if bool((tiles == (inside & grid[:, None, :, None])).all()):
        return grid
    return None


def pack_layer(layer: str, weight: torch.Tensor, mask: torch.Tensor,
               block: tuple[int, int] | None = None, bare: bool = False
               ) -> dict[str, torch.Tensor]:  # fmt: skip
    """The ``packed:`` tensors of one masked layer (``weight`` is its masked weight; ``bare``: a
    bare weight, stored under the layer name itself)."""
    w = gemm_view(weight.detach().cpu())
    m2 = gemm_view(mask.detach().cpu().bool())
    out = {_key(layer, "shape"): torch.tensor(list(weight.shape), dtype=torch.int64)}
    if bare:
        out[_key(layer, "bare")] = torch.ones(1, dtype=torch.bool)
    grid = _is_blocky(m2, block) if block and tuple(block) != (1, 1) else None
    if grid is not None:
        bm, bk = block
        gm, gk = grid.shape
        padded = F.pad(w, (0, gk * bk - w.shape[1], 0, gm * bm - w.shape[0]))
        tiles = padded.reshape(gm, bm, gk, bk).permute(0, 2, 1, 3)  # [gm, gk, bm, bk]
        out[_key(layer, "blocks")] = grid.contiguous()
        out[_key(layer, "values")] = tiles[grid].contiguous()
        return out
    flat = m2.reshape(-1)
    bits = F.pad(flat, (0, (-flat.numel()) % 8)).reshape(-1, 8).to(torch.uint8)
    out[_key(layer, "bits")] = (bits * _BIT_WEIGHTS).sum(1, dtype=torch.uint8).contiguous()
    out[_key(layer, "values")] = w.reshape(-1)[flat].contiguous()
    return out


def packed_layers(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the layers stored packed, in file order."""
    return [k[len(PREFIX) : -len(":shape")] for k in tensors
            if k.startswith(PREFIX) and k.endswith(":shape")]  # fmt: skip


def unpack_layer(layer: str, tensors: Mapping[str, torch.Tensor], origin: str,
                 old_order: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:  # fmt: skip
    """(masked weight, mask, bare) of one packed layer, both of the weight's shape; ``bare``:
    the layer name is the weight's own key (a bare weight). ``old_order``: a file of format /2
    or /3, packed over ``weight.reshape(out, -1)`` (K order (c_in, kh, kw))."""
    def back(matrix: torch.Tensor, full: tuple[int, ...]) -> torch.Tensor:
        return matrix.reshape(full) if old_order else from_gemm(matrix, full)

    where = f"{origin} has bad packed data for layer {layer}"

    def part(name: str) -> torch.Tensor | None:
        return tensors.get(_key(layer, name))

    bare = part("bare")
    if bare is not None and (bare.dtype != torch.bool or tuple(bare.shape) != (1,)
                             or not bool(bare[0])):  # fmt: skip
        raise UserError(f"{where}: its bare flag is {bare.dtype} {tuple(bare.shape)}, not "
                        "bool [True]", FIX)  # fmt: skip
    bare_flag = bare is not None

    shape, values = part("shape"), part("values")
    if shape is None or values is None or shape.dtype != torch.int64 or shape.dim() != 1 or (
        not 2 <= shape.numel() <= 5
    ):
        raise UserError(f"{where}: its shape or values are missing or malformed", FIX)
    full = tuple(int(v) for v in shape)
    if min(full) < 1 or math.prod(full) > 1 << 34:
        raise UserError(f"{where}: weight shape {full} is not a layer's", FIX)
    m, k = full[0], math.prod(full[1:])
    if not values.is_floating_point():
        raise UserError(f"{where}: values are {values.dtype}, not floating point", FIX)
    grid, bits = part("blocks"), part("bits")
    if (grid is None) == (bits is None):
        raise UserError(f"{where}: it needs exactly one of a block grid and a mask bitmap", FIX)
    if grid is not None:
        if grid.dtype != torch.bool or grid.dim() != 2 or values.dim() != 3:
            raise UserError(f"{where}: the block mask is {grid.dtype} {tuple(grid.shape)} with "
                            f"values {tuple(values.shape)}", FIX)  # fmt: skip
        gm, gk = grid.shape
        bm, bk = values.shape[1:]
        if bm < 1 or bk < 1 or (gm, gk) != (math.ceil(m / bm), math.ceil(k / bk)) or (
            values.shape[0] != int(grid.sum())
        ):
            raise UserError(f"{where}: the block mask {gm}x{gk} and {values.shape[0]} blocks of "
                            f"{bm}x{bk} do not fit a {m}x{k} layer", FIX)  # fmt: skip
        tiles = torch.zeros(gm, gk, bm, bk, dtype=values.dtype)
        tiles[grid] = values
        weight = tiles.permute(0, 2, 1, 3).reshape(gm * bm, gk * bk)[:m, :k]
        mask = grid.repeat_interleave(bm, 0).repeat_interleave(bk, 1)[:m, :k]
        return back(weight, full), back(mask, full), bare_flag
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != math.ceil(m * k / 8):
        raise UserError(f"{where}: the mask bitmap is {bits.dtype} {tuple(bits.shape)}, expected "
                        f"uint8 ({math.ceil(m * k / 8)},)", FIX)  # fmt: skip
    flat = ((bits[:, None] & _BIT_WEIGHTS) != 0).reshape(-1)[: m * k]
    if values.dim() != 1 or values.numel() != int(flat.sum()):
        raise UserError(f"{where}: {values.numel()} values for {int(flat.sum())} kept weights",
                        FIX)  # fmt: skip
    weight = torch.zeros(m * k, dtype=values.dtype)
    weight[flat] = values
    return back(weight.view(m, k), full), back(flat.view(m, k), full), bare_flag
