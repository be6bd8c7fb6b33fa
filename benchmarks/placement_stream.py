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
from pathlib import Path

import torch
from cpu_paths import add_model_arguments, compiled_pruned, model_fields, round_times, save, setup
from placement import by_placement, tagged_rounds

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
    paths = {name: lambda: ours(x) for name in reversed(settings)}

    def one_round(i: int) -> dict:
        times = round_times(paths, i, 1, args.calls, lambda n: lib.gp_set_stream_min_bytes(
            settings[n]))  # fmt: skip
        return {f"{name}_ms": ms for name, ms in times.items()}

    try:
        with torch.no_grad():
            rounds = tagged_rounds(one_round, args.seconds)
    finally:
        lib.gp_set_stream_min_bytes(-1)
    result = {**model_fields(args), "seconds": args.seconds, "environment": environment()}
    for w, rs in by_placement(rounds).items():
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
