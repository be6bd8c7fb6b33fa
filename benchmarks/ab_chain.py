"""A compiled model with its native runs (``ChainedSequential``: runs of convolutions, runs of
residual blocks) against the same model with them switched off, alternating in one process.

Each round runs both, taking turns going first: one untimed forward, then the mean of
``--calls`` timed. Prints and writes (``-o``) the medians, their ratio (runs / one by one) and
whether the outputs are bitwise equal.

    python benchmarks/ab_chain.py --model resnet50 --batch 1 --rounds 40 \\
        -o benchmarks/results/kernel-ab/block-chain-resnet50-tile-b1.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from cpu_paths import add_model_arguments, compiled_pruned, setup

from gpuprune.bench.environment import environment
from gpuprune.fileio import atomic_write_text
from gpuprune.nn.chain import ChainedSequential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    cfg, x = setup(args)
    runs = compiled_pruned(args, cfg)
    plain = copy.deepcopy(runs)
    for module in plain.modules():
        if isinstance(module, ChainedSequential):
            module._gp_runs = {}
    paths = {"one_by_one": plain, "runs": runs}
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.no_grad():
        for fn in paths.values():
            fn(x)  # prepares each layer's and each run's arguments for this shape
        equal = torch.equal(plain(x), runs(x))
        for r in range(args.rounds):
            order = list(paths.items())
            for name, fn in order if r % 2 == 0 else order[::-1]:
                fn(x)
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    fn(x)
                times[name].append((time.perf_counter() - t0) / args.calls * 1e3)
    a, b = statistics.median(times["one_by_one"]), statistics.median(times["runs"])
    result = {
        "model": args.model, "width": args.width if args.model == "vgg16" else None,
        "method": args.method, "sparsity": args.sparsity, "batch": args.batch,
        "threads": args.threads, "rounds": args.rounds, "one_by_one_ms": a, "runs_ms": b,
        "ratio_runs_over_one_by_one": b / a, "bitwise_equal": equal,
        "notes": [n for n in runs.gpuprune_compile.notes if "backend call per run" in n],
        "environment": environment(),
    }  # fmt: skip
    print(f"{args.model} {args.method}@{args.sparsity} b{args.batch}: one by one {a:.3f} ms, "
          f"runs {b:.3f} ms, runs/one-by-one {b / a:.3f}, bitwise equal {equal}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
