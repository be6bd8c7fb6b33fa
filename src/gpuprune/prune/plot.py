"""Heatmaps of kept blocks per layer (matplotlib's Agg canvas: no display, no global state)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch

from gpuprune.fileio import atomic_open
from gpuprune.gemm import block_reduce, gemm_view

MAX_CELLS = 256  # larger block grids are shown averaged (grey = fraction of blocks kept)
PLOT_FORMATS = ("png", "svg", "pdf")  # chosen by the file's extension


def plot_format(path: str | os.PathLike[str]) -> str:
    """The image format of ``path`` by its extension (png, svg or pdf).

    Raises:
        UserError: another extension (the bytes would not match the name).
    """
    from pathlib import Path

    from gpuprune.errors import UserError

    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise UserError(f"cannot write a plot as {Path(path).name!r}",
                        "name it .png, .svg or .pdf")  # fmt: skip
    return fmt


def plot_masks(
    masks: Mapping[str, torch.Tensor],
    blocks: Mapping[str, tuple[int, int]],
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """Write an image (PNG, SVG or PDF by ``path``'s suffix) with one panel per layer: its
    [M, K] block grid, kept blocks dark.

    Grids wider than ``MAX_CELLS`` are averaged into cells, grey showing the fraction kept.

    Args:
        masks: weight-shaped (or [M, K]) boolean keep-masks by layer name.
        blocks: each layer's block (rows, k); a missing layer is drawn per weight.
        path: the image to write (atomically).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = list(masks)
    cols = max(1, math.ceil(math.sqrt(len(names))))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        mask = gemm_view(masks[name].bool())
        block = tuple(blocks.get(name, (1, 1)))
        grid = block_reduce(mask, block, "any").float()
        gm, gk = grid.shape
        if max(grid.shape) > MAX_CELLS:  # average into cells: the fraction of blocks kept
            cells = (min(grid.shape[0], MAX_CELLS), min(grid.shape[1], MAX_CELLS))
            grid = torch.nn.functional.adaptive_avg_pool2d(grid[None, None], cells)[0, 0]
        extent = (-0.5, gk - 0.5, gm - 0.5, -0.5)  # ticks count blocks even when averaged
        ax.imshow(grid.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto",
                  interpolation="nearest", extent=extent)  # fmt: skip
        sparsity = 1 - float(mask.float().mean())
        ax.set_title(f"{name}\n{block[0]}x{block[1]} blocks, sparsity {sparsity:.2f}", fontsize=8)
        ax.set_xlabel("K blocks", fontsize=7)
        ax.set_ylabel("M blocks", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=plot_format(path), dpi=100)
