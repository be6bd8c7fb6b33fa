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

import torch
from cpu_paths import (
    add_model_arguments,
    add_round_arguments,
    compiled_pruned,
    model_fields,
    round_ratios,
    save,
    setup,
    time_models,
)

from gpuprune.bench.environment import environment
from gpuprune.nn.chain import ChainedSequential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    add_round_arguments(parser, rounds=30, warm=1, calls=2)
    args = parser.parse_args()
    cfg, x = setup(args)
    runs = compiled_pruned(args, cfg)
    plain = copy.deepcopy(runs)
    for module in plain.modules():
        if isinstance(module, ChainedSequential):
            module._gp_runs = {}
    times = time_models({"one_by_one": plain, "runs": runs}, x, args)
    with torch.no_grad():
        equal = torch.equal(plain(x), runs(x))
    med, _, _ = round_ratios(times, "runs", "one_by_one")
    a, b = med["one_by_one"], med["runs"]
    result = {
        **model_fields(args), "rounds": args.rounds, "one_by_one_ms": a, "runs_ms": b,
        "ratio_runs_over_one_by_one": b / a, "bitwise_equal": equal,
        "notes": [n for n in runs.gpuprune_compile.notes if "backend call per run" in n],
        "environment": environment(),
    }  # fmt: skip
    print(f"{args.model} {args.method}@{args.sparsity} b{args.batch}: one by one {a:.3f} ms, "
          f"runs {b:.3f} ms, runs/one-by-one {b / a:.3f}, bitwise equal {equal}")
    save(args.out, result)


if __name__ == "__main__":
    main()
