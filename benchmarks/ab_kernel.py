"""A/B of two versions of the CPU kernel source in one process, on a whole compiled model.

The kernel file at a git revision (``--base``, default HEAD) and the working tree's are both built
(each into the kernel cache under its own hash) and loaded; one compiled model then runs with
either library in turn, round after round (each with its own copy of the model, so neither reads
the other's per-shape tables), so a host that gets busier or quieter slows both
alike (this VM's speed drifts between processes and over minutes by more than most changes
are worth). Each round runs each library's forwards back to back, ``--warm`` untimed, then the
mean of ``--calls`` timed; the two take turns going first. Prints and writes (``-o``) the
medians, their ratio (new / base) and the quartiles of the per-round ratios, and the largest
difference between the two outputs.

    python benchmarks/ab_kernel.py --model vgg16 --method tile --batch 1 --rounds 100 \\
        -o benchmarks/results/kernel-ab/narrow-vgg16-tile-b1.json
"""

from __future__ import annotations

import argparse
import copy
import subprocess
from collections.abc import Callable
from pathlib import Path

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
from gpuprune.kernels.cpu import backend as cpu_backend
from gpuprune.kernels.cpu import build, ops, pool

KERNEL = "src/gpuprune/kernels/cpu/" + build.SOURCE


def base_library(rev: str):
    """The kernel library built from the source at git revision ``rev``."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:{KERNEL}"], cwd=root, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    own, signatures = build._source, build._SIGNATURES
    build._source = lambda: source
    # functions added since `rev` are not in its library
    build._SIGNATURES = {n: sig for n, sig in signatures.items() if n in source}
    try:
        return build.load_library.__wrapped__()
    finally:
        build._source, build._SIGNATURES = own, signatures


def base_and_new(args: argparse.Namespace, cfg) -> tuple[dict, Callable[[str], None]]:
    """The pruned model compiled once and copied for the ``base`` (``args.base``) and ``new``
    (working tree) kernel libraries, and the function that makes one of them the one every
    caller gets."""
    libs = {"base": base_library(args.base), "new": build.load_library()}
    current = {"lib": libs["new"]}
    for module in (cpu_backend, ops, pool):  # every caller looks the library up per call
        module.load_library = lambda: current["lib"]
    # a copy per library, made before any call: the per-shape tap tables and chain programs
    # each library builds are its own (their layout may differ between versions)
    compiled = compiled_pruned(args, cfg)
    models = {name: copy.deepcopy(compiled) for name in libs}
    return models, lambda name: current.update(lib=libs[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "vgg16")
    add_round_arguments(parser, rounds=50, warm=3, calls=5)
    parser.add_argument("--base", default="HEAD", help="git revision of the base kernel")
    args = parser.parse_args()
    cfg, x = setup(args)

    models, use = base_and_new(args, cfg)
    times = time_models(models, x, args, enter=use)
    outputs = {}
    with torch.no_grad():
        for name in models:
            use(name)
            outputs[name] = models[name](x)
    med, ratio, q = round_ratios(times, "new", "base")
    result = {
        **model_fields(args), "rounds": args.rounds, "base": args.base,
        "base_ms": med["base"], "new_ms": med["new"], "ratio_new_over_base": ratio,
        "round_ratio_quartiles": q,
        "max_abs_difference": float((outputs["new"] - outputs["base"]).abs().max()),
        "environment": environment(),
    }  # fmt: skip
    print(f"{args.model} {args.method}@{args.sparsity} b{args.batch}: base {result['base_ms']:.3f}"
          f" ms, new {result['new_ms']:.3f} ms, new/base {result['ratio_new_over_base']:.3f} "
          f"(rounds {q[0]:.3f}-{q[2]:.3f}), outputs differ by {result['max_abs_difference']:.2g}")
    save(args.out, result)


if __name__ == "__main__":
    main()
