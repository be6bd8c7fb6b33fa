"""A compiled model's native runs taking whole images per thread (``by_image``) against the
same runs with every layer split over the threads, alternating in one process. By image is as
the library decides (whole runs where every layer of an image fills over half a panel, else a
run's wide head), or, with ``--whole``, every run whole whatever its layers' sizes (what the
half-panel rule was measured with).

Each round runs both schedules, taking turns going first: ``--warm`` untimed forwards, then
the mean of ``--calls`` timed. Prints and writes (``-o``) the medians, their ratio (by image /
by layer), the quartiles of the per-round ratios and whether the outputs are bitwise equal.

    python benchmarks/ab_images.py --model resnet50 --batch 16 --rounds 12 \\
        -o benchmarks/results/kernel-ab/by-image-resnet50-tile-b16.json
"""

from __future__ import annotations

import argparse

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
from gpuprune.kernels.cpu import chain

RULE = chain.by_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    add_round_arguments(parser, rounds=12, warm=1, calls=2)
    parser.add_argument("--whole", action="store_true", help="every run whole, by image")
    args = parser.parse_args()
    if not RULE(args.batch, args.threads):
        parser.error(f"batch {args.batch} at {args.threads} threads runs by layer either way")
    if args.whole:
        chain._Program.wide = property(lambda self: True, lambda self, value: None)
    cfg, x = setup(args)
    model = compiled_pruned(args, cfg)

    def enter(name: str) -> None:
        chain.by_image = RULE if name == "by_image" else (lambda images, threads: False)

    outputs = {}
    with torch.no_grad():
        for name in ("by_image", "by_layer"):
            enter(name)
            outputs[name] = model(x)
    times = time_models({"by_image": model, "by_layer": model}, x, args, enter)
    med, ratio, q = round_ratios(times, "by_image", "by_layer")
    equal = torch.equal(outputs["by_image"], outputs["by_layer"])
    # not bitwise where a panel's columns decide the micro-kernel (an image's last panel)
    diff = (outputs["by_image"] - outputs["by_layer"]).abs().max().item()
    scale = outputs["by_layer"].abs().max().item()
    result = {
        **model_fields(args), "whole": args.whole, "rounds": args.rounds, "median_ms": med,
        "ratio_by_image_over_by_layer": ratio, "round_ratio_quartiles": q,
        "bitwise_equal": equal, "max_abs_difference": diff, "max_abs_output": scale,
        "environment": environment(),
    }  # fmt: skip
    print(f"{args.model} {args.method}@{args.sparsity} b{args.batch}: by image "
          f"{med['by_image']:.3f} ms, by layer {med['by_layer']:.3f} ms, ratio {ratio:.3f} "
          f"(rounds {q[0]:.3f}-{q[2]:.3f}), bitwise equal {equal} (max difference {diff:.2g} of "
          f"{scale:.3g})")  # fmt: skip
    save(args.out, result)


if __name__ == "__main__":
    main()
