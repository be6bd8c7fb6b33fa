"""CPU backend against PyTorch's dense conv2d (oneDNN) on VGG16's 3x3 layers at CIFAR size.

For each layer the weight gets a random tile mask (the target's MWG x KWG blocks, a fixed share
pruned) and, separately, a SIMD-vector mask (R x simd_k). Timed, interleaved round by round so
that load from other processes hits every method alike:

* ``onednn``: ``F.conv2d`` with the masked weight (dense: it multiplies the zeros),
* ``cpu-dense``: the cpu backend's own kernel walking every block (its dense baseline),
* ``cpu-tile`` / ``cpu-simd``: the cpu backend skipping pruned tiles / SIMD vectors.

Reports medians (and quartiles) in ms and the speedups over oneDNN, as JSON.

    python benchmarks/cpu_backend.py --threads 2 --out benchmarks/results/cpu_backend.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gpuprune.arch import get_target
from gpuprune.bench.environment import environment
from gpuprune.fileio import atomic_write_text
from gpuprune.gemm import expand_blocks
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import get_backend, pack_for

# VGG16 on 32x32 inputs: (name, c_in, c_out, input side); all 3x3, stride 1, padding 1
VGG16_CIFAR = [
    ("conv1_1", 3, 64, 32), ("conv1_2", 64, 64, 32),
    ("conv2_1", 64, 128, 16), ("conv2_2", 128, 128, 16),
    ("conv3_1", 128, 256, 8), ("conv3_2", 256, 256, 8), ("conv3_3", 256, 256, 8),
    ("conv4_1", 256, 512, 4), ("conv4_2", 512, 512, 4), ("conv4_3", 512, 512, 4),
    ("conv5_1", 512, 512, 2), ("conv5_2", 512, 512, 2), ("conv5_3", 512, 512, 2),
]  # fmt: skip


def masked(weight: torch.Tensor, block: tuple[int, int], sparsity: float, seed: int):
    """``weight`` [M, K] with exactly round(sparsity * blocks) random blocks zeroed."""
    m, k = weight.shape
    gm, gk = -(-m // block[0]), -(-k // block[1])
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(gm * gk, generator=g)
    keep = torch.ones(gm * gk, dtype=torch.bool)
    keep[order[: round(sparsity * gm * gk)]] = False
    return weight * expand_blocks(keep.reshape(gm, gk), block, (m, k))


def time_interleaved(fns: dict, repeats: int, warmup: int) -> dict:
    """Median/quartiles (ms) per function, calling each once per round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        out[name] = {
            "median_ms": statistics.median(ts), "p25_ms": q[0], "p75_ms": q[2], "min_ms": min(ts),
        }  # fmt: skip
    return out


def bench_layer(name, cin, cout, side, args, target, backend):
    torch.manual_seed(hash(name) % 2**31)
    weight = torch.randn(cout, cin * 9) * (2 / (cin * 9)) ** 0.5
    bias = torch.randn(cout) * 0.1
    x = torch.randn(args.batch, cin, side, side)
    conv = {"geometry": ConvGeometry(cin, (3, 3), padding=(1, 1))}
    w_tile = masked(weight, target.tile_block(), args.sparsity, seed=1)
    w_simd = masked(weight, target.simd_block(), args.sparsity, seed=2)
    layers = {
        variant: backend.conv2d(pack_for(w, target, variant), bias, target, variant=variant,
                                **conv)  # fmt: skip
        for variant, w in (("dense", w_tile), ("tile", w_tile), ("simd", w_simd))
    }
    w4 = w_tile.reshape(cout, cin, 3, 3)
    ref = F.conv2d(x, w4, bias, padding=1)
    for variant, layer in layers.items():
        w = w_simd if variant == "simd" else w_tile
        want = F.conv2d(x, w.reshape(cout, cin, 3, 3), bias, padding=1)
        err = float((layer(x) - want).abs().max() / want.abs().max())
        assert err < 1e-4, f"{name} {variant}: relative error {err:.2e}"
    del ref
    fns = {
        "onednn": lambda: F.conv2d(x, w4, bias, padding=1),
        "cpu-dense": lambda: layers["dense"](x),
        "cpu-tile": lambda: layers["tile"](x),
        "cpu-simd": lambda: layers["simd"](x),
    }
    timings = time_interleaved(fns, args.repeats, args.warmup)
    base = timings["onednn"]["median_ms"]
    return {
        "layer": name, "c_in": cin, "c_out": cout, "side": side,
        "gemm_mnk": [cout, args.batch * side * side, cin * 9],
        "tile_density": 1 - pack_for(w_tile, target, "tile").skippable_fraction(),
        "simd_density": 1 - pack_for(w_simd, target, "simd").skippable_fraction(),
        "timings": timings,
        "speedup_vs_onednn": {k: base / v["median_ms"] for k, v in timings.items()},
        # min over rounds: less sensitive to other processes taking a core
        "speedup_vs_onednn_min": {
            k: timings["onednn"]["min_ms"] / v["min_ms"] for k, v in timings.items()
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cpu-pocl")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sparsity", type=float, default=0.75, help="share of blocks pruned")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--layers", default="", help="comma-separated subset, e.g. conv4_2")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_backend.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    target = get_target(args.target)
    backend = get_backend("cpu")
    backend.check_available()
    wanted = set(filter(None, args.layers.split(",")))
    load_before = os.getloadavg()
    rows = []
    for spec in VGG16_CIFAR:
        if wanted and spec[0] not in wanted:
            continue
        row = bench_layer(*spec, args, target, backend)
        rows.append(row)
        s, smin = row["speedup_vs_onednn"], row["speedup_vs_onednn_min"]
        print(
            f"{row['layer']:8s} onednn {row['timings']['onednn']['median_ms']:7.2f} ms  "
            + "  ".join(f"{k} x{s[k]:.2f} (min x{smin[k]:.2f})" for k in list(s)[1:]),
            flush=True,
        )
    result = {
        "benchmark": "cpu_backend",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "tile_block": list(target.tile_block()),
        "simd_block": list(target.simd_block()),
        "environment": environment(),
        "note": "median and min of interleaved rounds; other processes may share the cores",
        # 1-minute load average before/after: above the thread count, timings are noisy
        "loadavg_1min": [load_before[0], os.getloadavg()[0]],
        "layers": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
