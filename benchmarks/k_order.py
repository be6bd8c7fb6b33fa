"""What a tile removes depends on the GEMM view's K order: tile@75% fine-tuned with the demo's
recipe from the demo's dense model, its 32x32 blocks taken over gpuprune's K order (kh, kw, c_in),
c_in fastest (an NHWC implicit GEMM's, ``gemm.K_ORDER``), or over (c_in, kh, kw), c_in slowest
(NCHW im2col's, gpuprune's own order until the switch: the committed results were made at
01effbb, where it was the default and the script swapped in the other).

In the (c_in, kh, kw) order a 32-wide K block holds 3.6 input channels with all 9 taps of a 3x3
kernel, so a pruned block cuts those channels off from the block's 32 outputs: in a layer one
tile row high (32 output channels) tile@75% keeps 7 of 32 input channels, channel pruning. In
the (kh, kw, c_in) order a block holds one tap of 32 channels, and every channel stays connected
through the kept taps.

This measures accuracy only: in each worker process of the channel-major cells the pruner's GEMM
view of a spatial convolution (and the mask's way back to the weight) is swapped for the
(c_in, kh, kw) one before the cell is fine-tuned. Channel reordering (``prune.permute``) is off
in both orders. ``unstructured`` (one-weight blocks, either order) is the reference; each cell
runs in a fresh process, two at a time (the demo's ``workers: 2``).

    python benchmarks/k_order.py --dense runs/demo/dense --seeds 0,1,2 \\
        -o benchmarks/results/k-order-<device>.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # recipes_demo, in spawned workers

from gpuprune.bench.environment import environment  # noqa: E402
from gpuprune.fileio import atomic_write_text  # noqa: E402

ORDERS = ("channel-major", "tap-major")


def channel_major_view() -> None:
    """The pruner sees a spatial conv's weight [M, C, kh, kw] as [M, (C, kh, kw)]; masks it
    returns in that view go back to the weight's layout. This process only."""
    import torch

    from gpuprune import gemm
    from gpuprune.prune import api, importance, masks

    view, layout = gemm.gemm_view, masks.stored_layout

    def spatial(w) -> bool:
        return isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[2] * w.shape[3] > 1

    def gemm_view(module):
        w = module if isinstance(module, torch.Tensor) else getattr(module, "weight", None)
        return w.reshape(w.shape[0], -1) if spatial(w) else view(module)

    def stored_layout(module, mask):
        w = masks.stored_weight(module)
        if spatial(w) and mask.dim() == 2:
            return mask.reshape(w.shape)
        return layout(module, mask)

    api.gemm_view = importance.gemm_view = gemm_view
    masks.stored_layout = api.stored_layout = stored_layout


def _cell(dense: str, runs: str, method: str, order: str, seed: int) -> dict:
    import recipes_demo

    if order == "channel-major":
        channel_major_view()
    row = recipes_demo._cell("configs/demo.yaml", dense, str(Path(runs) / order), "no-permute",
                             method, 0.75, seed)  # fmt: skip
    return {**row, "order": order}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", type=Path, required=True, help="a demo run's dense/ folder")
    ap.add_argument("--runs", type=Path, default=Path("runs/k-order"))
    ap.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [("tile", o, s) for s in seeds for o in ORDERS]
    jobs += [("unstructured", "tap-major", s) for s in seeds]
    ctx = multiprocessing.get_context("spawn")
    # one cell per process: the swapped view must not leak into the next cell
    with ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=1) as pool:
        futures = [pool.submit(_cell, str(args.dense), str(args.runs), m, o, s)
                   for m, o, s in jobs]  # fmt: skip
        rows = [f.result() for f in futures]
    acc = {(r["method"], r["order"], r["seed"]): r["accuracy"] for r in rows}
    gaps = {o: [round((acc[("unstructured", "tap-major", s)] - acc[("tile", o, s)]) * 100, 2)
                for s in seeds] for o in ORDERS}  # fmt: skip
    out = {"dense": str(args.dense), "sparsity": 0.75, "rows": rows,
           "tile_gap_to_unstructured_pt": gaps, "environment": environment()}  # fmt: skip
    atomic_write_text(args.output, json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
