"""Which layers lose time when the two vCPUs sit on different L3s: our pruned model layer by
layer (a hook on every leaf module, as ``profile_cpu.py``), each forward tagged near or far
(``placement.py``), and every layer's median in each placement.

Each round probes, runs one untimed and one timed forward with the hooks, and probes again.
Prints the forward's medians and the layers whose median grows most far, and writes (``-o``)
every layer's two medians.

    python benchmarks/placement_layers.py --model resnet50 --batch 1 --seconds 240 \\
        -o benchmarks/results/placement-layers-resnet50-tile-b1.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from cpu_paths import add_model_arguments, compiled_pruned, model_fields, save, setup
from placement import by_placement, tagged_rounds
from torch import nn

from gpuprune.bench.environment import environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--show", type=int, default=20, help="layers printed")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    cfg, x = setup(args)
    model = compiled_pruned(args, cfg)
    start: dict[str, float] = {}
    took: dict[str, float] = {}
    for name, mod in model.named_modules():
        if not name or list(mod.children()) or isinstance(mod, nn.Identity):
            continue

        def pre(_m, _i, name=name):
            start[name] = time.perf_counter()

        def post(_m, _i, _o, name=name):  # a module called twice (a shared ReLU) adds up
            took[name] = took.get(name, 0.0) + (time.perf_counter() - start[name]) * 1e3

        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)

    def one_round(_: int) -> dict:
        model(x)
        took.clear()
        t0 = time.perf_counter()
        model(x)
        return {"forward_ms": (time.perf_counter() - t0) * 1e3, "layers_ms": dict(took)}

    with torch.no_grad():
        rounds = tagged_rounds(one_round, args.seconds)
    by = by_placement(rounds)
    result = {**model_fields(args), "seconds": args.seconds, "environment": environment(),
              "rounds": {w: len(rs) for w, rs in by.items()}}  # fmt: skip
    if by["near"] and by["far"]:
        med = {w: {n: statistics.median(r["layers_ms"][n] for r in rs) for n in took}
               for w, rs in by.items()}  # fmt: skip
        result["forward_ms"] = {w: statistics.median(r["forward_ms"] for r in rs)
                                for w, rs in by.items()}  # fmt: skip
        result["layers_ms"] = {n: {"near": med["near"][n], "far": med["far"][n]} for n in took}
        grown = sorted(took, key=lambda n: med["near"][n] - med["far"][n])
        f = result["forward_ms"]
        print(f"{len(by['near'])} near and {len(by['far'])} far rounds: forward {f['near']:.2f} "
              f"/ {f['far']:.2f} ms; the layers' growth adds up to "
              f"{sum(med['far'][n] - med['near'][n] for n in took):.2f} ms")
        for n in grown[: args.show]:
            print(f"  {n:28s} {med['near'][n]:.3f} -> {med['far'][n]:.3f} ms")
    else:
        print(f"rounds: {result['rounds']}; no comparison without both placements")
    save(args.out, result)


if __name__ == "__main__":
    main()
