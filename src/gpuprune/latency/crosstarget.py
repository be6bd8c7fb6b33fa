"""Cross-target view: one pruned model's skippable fraction and modelled speedup on every preset.

A mask pruned for one GPU can be packed for any other (a block is kept unless it is all zero),
so the same model has a skippable fraction, and a speedup, on each target. The speedup is the
analytical model's (:mod:`gpuprune.latency.analytical`): the whole model's GEMM layers, dense
against packed, at the given batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gpuprune.arch import get_target, list_targets
from gpuprune.gemm import block_grid, block_reduce, gemm_view
from gpuprune.kernels.format import block_for
from gpuprune.latency.analytical import analytical_ms
from gpuprune.latency.geometry import model_geometries
from gpuprune.plan import SKIP_KERNELS

VARIANTS = SKIP_KERNELS


def _skippable(weight: torch.Tensor, block: tuple[int, int]) -> float:
    """Share of ``block``-shaped blocks of ``weight`` that are all zero (what pack() would skip)."""
    kept = block_reduce(weight != 0, block, "any")
    return 1.0 - float(kept.sum()) / max(kept.numel(), 1)


def cross_target(
    model: nn.Module,
    targets: Iterable[str] | None = None,
    batch: int = 1,
    input_size: tuple[int, ...] | None = None,
    variants: Iterable[str] = VARIANTS,
) -> list[dict[str, Any]]:
    """One row per (preset target, kernel variant) for a pruned model.

    Args:
        model: a pruned model (masked parametrizations or zeros in the weights).
        targets: preset names; default every preset.
        batch: batch size of the modelled latency.
        input_size: one sample's shape for the dummy pass that finds conv input sizes.
        variants: the kernel variants to pack for (default tile and simd).

    Returns:
        Rows with ``target``, ``variant``, ``block`` ("RxK"), ``skippable`` (pruned blocks' share
        of all GEMM layers' padded weight area), ``modelled_ms``, ``dense_ms`` and
        ``modelled_speedup`` (dense / pruned, analytical).
    """
    geoms = model_geometries(model, batch, input_size)
    modules = dict(model.named_modules())
    weights = {name: gemm_view(modules[name].weight).detach().cpu() for name in geoms}
    rows = []
    for name in targets or list_targets():
        target = get_target(name)
        for variant in variants:
            block = block_for(target, variant)
            pruned_area = total_area = 0.0
            dense_ms = ms = 0.0
            for layer, geom in geoms.items():
                gm, gk = block_grid(tuple(weights[layer].shape), block)
                area = gm * gk * block[0] * block[1]
                skip = _skippable(weights[layer], block)
                pruned_area += skip * area
                total_area += area
                slabs = None
                if variant == "simd":  # input slabs: those any SIMD row-group of a tile keeps
                    slabs = 1.0 - _skippable(weights[layer], target.tile_block())
                dense_ms += analytical_ms(geom, target, variant, 1.0)
                ms += analytical_ms(geom, target, variant, 1.0 - skip, kept_slabs=slabs)
            rows.append(
                {
                    "target": name,
                    "variant": variant,
                    "block": f"{block[0]}x{block[1]}",
                    "skippable": pruned_area / max(total_area, 1.0),
                    "dense_ms": dense_ms,
                    "modelled_ms": ms,
                    "modelled_speedup": dense_ms / ms if ms > 0 else float("inf"),
                }
            )
    return rows
