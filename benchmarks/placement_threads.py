"""Our pruned forward on one thread pinned to each CPU and on all threads, alternating in one
process, each round tagged near or far (``placement.py``): whether the far placement slows a
vCPU itself (a one-thread run slower on it, as remote memory would) or only threads sharing the
work (the crossing between L3s).

Each round probes, runs each variant (one untimed call, then ``--calls`` timed ones) and probes
again. Prints and writes (``-o``) the medians per placement.

    python benchmarks/placement_threads.py --model resnet50 --batch 1 --seconds 240 \\
        -o benchmarks/results/placement-threads-resnet50-tile-b1.json
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
from cpu_paths import add_model_arguments, compiled_pruned, model_fields, round_times, save, setup
from placement import by_placement, tagged_rounds

from gpuprune.bench.environment import environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--calls", type=int, default=1, help="timed calls per variant a round")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    cfg, x = setup(args)
    ours = compiled_pruned(args, cfg)
    everywhere = os.sched_getaffinity(0)
    # name: (threads, CPUs); the probe times CPUs 0 and 1
    variants = {"cpu0": (1, {0}), "cpu1": (1, {1}), "all": (args.threads, everywhere)}

    def enter(name: str) -> None:
        threads, cpus = variants[name]
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)

    def one_round(_: int) -> dict:  # round 0 every time: the variants in one order
        times = round_times({v: lambda: ours(x) for v in variants}, 0, 1, args.calls, enter)
        os.sched_setaffinity(0, everywhere)
        return {f"{name}_ms": ms for name, ms in times.items()}

    with torch.no_grad():
        rounds = tagged_rounds(one_round, args.seconds)
    result = {**model_fields(args), "seconds": args.seconds, "environment": environment()}
    for name, rs in by_placement(rounds).items():
        result[name] = {"rounds": len(rs), **{f"{v}_median_ms": statistics.median(
            r[f"{v}_ms"] for r in rs) for v in variants}} if rs else None  # fmt: skip
        if rs:
            print(f"{name}: {len(rs)} rounds, one thread on CPU 0 "
                  f"{result[name]['cpu0_median_ms']:.2f} ms, on CPU 1 "
                  f"{result[name]['cpu1_median_ms']:.2f}, {args.threads} threads "
                  f"{result[name]['all_median_ms']:.2f}")
    result["rounds"] = rounds
    save(args.out, result)


if __name__ == "__main__":
    main()
