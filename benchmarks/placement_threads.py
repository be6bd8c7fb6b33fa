"""Our pruned forward at one thread and at two, alternating in one process, each round tagged
near or far (``placement.py``): whether the far placement slows the vCPUs themselves (one
thread slower too) or only two threads sharing the work (the crossing between L3s).

Each round probes, runs two timed calls at each thread count (after one untimed call, taking
turns going first) and probes again. Prints and writes (``-o``) the medians per placement.

    python benchmarks/placement_threads.py --model resnet50 --batch 1 --seconds 180 \\
        -o benchmarks/results/placement-threads-resnet50-tile-b1.json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--calls", type=int, default=2, help="timed calls per thread count")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    cfg, x = setup(args)
    ours = compiled_pruned(args, cfg)
    probe = Probe()
    counts = (1, args.threads)
    rounds: list[dict] = []
    end = time.perf_counter() + args.seconds
    with torch.no_grad():
        while time.perf_counter() < end:
            row = {"probe_ns": [probe()]}
            for n in counts if len(rounds) % 2 else counts[::-1]:
                torch.set_num_threads(n)
                ours(x)
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    ours(x)
                row[f"threads_{n}_ms"] = (time.perf_counter() - t0) / args.calls * 1e3
            row["probe_ns"].append(probe())
            rounds.append(row)
    torch.set_num_threads(args.threads)
    where = [placement(*r["probe_ns"]) for r in rounds]
    result = {**model_fields(args), "seconds": args.seconds, "environment": environment()}
    for name in ("near", "far"):
        rs = [r for r, w in zip(rounds, where, strict=True) if w == name]
        result[name] = {"rounds": len(rs), **{f"threads_{n}_median_ms": statistics.median(
            r[f"threads_{n}_ms"] for r in rs) for n in counts}} if rs else None  # fmt: skip
        if rs:
            print(f"{name}: {len(rs)} rounds, " + ", ".join(
                f"{n} thread(s) {result[name][f'threads_{n}_median_ms']:.2f} ms" for n in counts))
    result["rounds"] = rounds
    save(args.out, result)


if __name__ == "__main__":
    main()
