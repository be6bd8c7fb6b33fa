"""Our pruned forward with every output written by streaming stores against the default (only
outputs over the threads' L2 caches stream), alternating in one process, each round tagged near
or far (``placement.py``): whether far, stores to lines the other L3 holds are what costs.

Each round probes, runs each setting (one untimed call, then ``--calls`` timed ones; taking
turns going first) and probes again. Prints and writes (``-o``) the medians per placement.

    python benchmarks/placement_stream.py --model resnet50 --batch 1 --seconds 200 \\
        -o benchmarks/results/placement-stream-resnet50-tile-b1.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from cpu_paths import add_model_arguments, compiled_pruned, model_fields, save, setup
from placement import Probe, placement

from gpuprune.bench.environment import environment
from gpuprune.kernels.cpu import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    parser.add_argument("--seconds", type=float, default=200.0)
    parser.add_argument("--calls", type=int, default=2, help="timed calls per setting a round")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    cfg, x = setup(args)
    ours = compiled_pruned(args, cfg)
    lib = build.load_library()
    settings = {"default": -1, "every_output_streamed": 0}  # gp_set_stream_min_bytes
    probe = Probe()
    rounds: list[dict] = []
    end = time.perf_counter() + args.seconds
    try:
        with torch.no_grad():
            while time.perf_counter() < end:
                row = {"probe_ns": [probe()]}
                names = list(settings) if len(rounds) % 2 else list(settings)[::-1]
                for name in names:
                    lib.gp_set_stream_min_bytes(settings[name])
                    ours(x)
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        ours(x)
                    row[f"{name}_ms"] = (time.perf_counter() - t0) / args.calls * 1e3
                row["probe_ns"].append(probe())
                rounds.append(row)
    finally:
        lib.gp_set_stream_min_bytes(-1)
    where = [placement(*r["probe_ns"]) for r in rounds]
    result = {**model_fields(args), "seconds": args.seconds, "environment": environment()}
    for w in ("near", "far"):
        rs = [r for r, p in zip(rounds, where, strict=True) if p == w]
        if not rs:
            result[w] = None
            continue
        med = {n: statistics.median(r[f"{n}_ms"] for r in rs) for n in settings}
        ratio = med["every_output_streamed"] / med["default"]
        result[w] = {"rounds": len(rs), **{f"{n}_median_ms": m for n, m in med.items()},
                     "ratio_streamed_over_default": ratio}  # fmt: skip
        print(f"{w}: {len(rs)} rounds, default {med['default']:.2f} ms, every output streamed "
              f"{med['every_output_streamed']:.2f} ms: {ratio:.3f}x")
    result["rounds"] = rounds
    save(args.out, result)


if __name__ == "__main__":
    main()
