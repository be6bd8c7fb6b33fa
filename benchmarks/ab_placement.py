"""A/B of two versions of the CPU kernel source (as ``ab_kernel.py``), each sample tagged with
where the hypervisor had put the two vCPUs: near (sharing an L3) or far.

On this project's 2-vCPU VM the two vCPUs move between sharing an L3 and not, within seconds
(``placement.py``). Far, a batch-1 forward at two threads takes about one thread's time. Each
sample probes the placement, runs ``--calls`` forwards with each library (taking turns going
first, one untimed call each), and probes again. Prints and writes (``-o``) the medians and
ratio (new / base) for each placement.

    python benchmarks/ab_placement.py --model resnet50 --batch 1 --seconds 300 \\
        -o benchmarks/results/kernel-ab/placement-resnet50-tile-b1.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from ab_kernel import base_and_new
from cpu_paths import add_model_arguments, model_fields, round_times, save, setup
from placement import FAR_NS, by_placement, tagged_rounds

from gpuprune.bench.environment import environment


def summary(samples: list[dict]) -> dict | None:
    if not samples:
        return None
    base = statistics.median(s["base_ms"] for s in samples)
    new = statistics.median(s["new_ms"] for s in samples)
    q = statistics.quantiles([s["new_ms"] / s["base_ms"] for s in samples], n=4) \
        if len(samples) > 1 else [new / base] * 3  # fmt: skip
    return {"samples": len(samples), "base_ms": base, "new_ms": new, "ratio_new_over_base":
            new / base, "sample_ratio_quartiles": q}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    parser.add_argument("--base", default="HEAD", help="git revision of the base kernel")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--calls", type=int, default=4, help="timed calls per library a sample")
    parser.add_argument("--far", type=float, default=FAR_NS, help="ns: a probe over it is far")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    cfg, x = setup(args)
    models, use = base_and_new(args, cfg)

    paths = {name: lambda m=models[name]: m(x) for name in ("new", "base")}

    def sample(i: int) -> dict:
        times = round_times(paths, i, warm=1, calls=args.calls, enter=use)
        return {f"{name}_ms": ms for name, ms in times.items()}

    with torch.no_grad():
        samples = tagged_rounds(sample, args.seconds)
    split = by_placement(samples, args.far)
    result = {**model_fields(args), "base": args.base, "seconds": args.seconds,
              "near": summary(split["near"]), "far": summary(split["far"]),
              "all": summary(samples),
              "environment": environment(), "samples": samples}  # fmt: skip
    for name in ("near", "far", "all"):
        s = result[name]
        if s:
            print(f"{name}: {s['samples']} samples, base {s['base_ms']:.2f} ms, new "
                  f"{s['new_ms']:.2f} ms, new/base {s['ratio_new_over_base']:.3f}")
    save(args.out, result)


if __name__ == "__main__":
    main()
