"""simd against tile on the CPU backend, the two compiled models alternating in one process: the
ratio issue 14's "simd within 15% of tile" reads, with this VM's slow phases landing on both.

Each round runs both models (the same architecture and sparsity, pruned with each method as
``gpuprune bench`` prunes them), taking turns going first: ``--warm`` untimed forwards, then the
mean of ``--calls`` timed. Prints and writes (``-o``) the medians, their ratio (``--method`` over
``--against``) and the quartiles of the per-round ratios.

    python benchmarks/ab_methods.py --model resnet50 --batch 16 --rounds 20 \\
        -o benchmarks/results/kernel-ab/simd-vs-tile-resnet50-b16.json
"""

from __future__ import annotations

import argparse

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "vgg16")
    parser.set_defaults(method="simd")
    parser.add_argument("--against", default="tile", help="the method the ratio divides by")
    add_round_arguments(parser, rounds=30, warm=2, calls=5)
    args = parser.parse_args()
    cfg, x = setup(args)
    models = {m: compiled_pruned(_with(args, m), cfg) for m in (args.method, args.against)}
    med, ratio, q = round_ratios(time_models(models, x, args), args.method, args.against)
    result = {
        **model_fields(args), "against": args.against, "rounds": args.rounds,
        "median_ms": med, "ratio": ratio, "round_ratio_quartiles": q,
        "environment": environment(),
    }  # fmt: skip
    print(f"{args.model} b{args.batch} @{args.sparsity}: {args.method} {med[args.method]:.3f} ms, "
          f"{args.against} {med[args.against]:.3f} ms, ratio {result['ratio']:.3f} "
          f"(rounds {q[0]:.3f}-{q[2]:.3f})")  # fmt: skip
    save(args.out, result)


def _with(args: argparse.Namespace, method: str) -> argparse.Namespace:
    """``args`` with another method (the model arguments compiled_pruned reads)."""
    return argparse.Namespace(**{**vars(args), "method": method})


if __name__ == "__main__":
    main()
