"""Our pruned path and OpenVINO's dense path call after call for a while, on ResNet-50 (or
VGG16), each round tagged with where the two vCPUs were (``placement.py``: near, sharing an L3,
or far): the speedup over OpenVINO in each placement.

This VM's slow phases are the hypervisor putting the two vCPUs on different L3s. Each round
probes, times one call of each (after one untimed call of each, so both see the same
placement) and probes again. Prints and writes (``-o``) for near, far and all rounds: both
medians, the ratio of the medians and the quartiles of the per-round speedup.

    python benchmarks/phases.py --model resnet50 --batch 1 --seconds 300 \\
        -o benchmarks/results/phases-resnet50-tile-b1.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from cpu_paths import add_model_arguments, compiled_pruned, model_fields, round_times, save, setup
from placement import by_placement, tagged_rounds

from gpuprune.bench.dense_runtimes import openvino_runtime
from gpuprune.bench.e2e_bench import _build_model
from gpuprune.bench.environment import environment


def summary(rounds: list[dict]) -> dict | None:
    if not rounds:
        return None
    ours = statistics.median(r["ours_ms"] for r in rounds)
    ov = statistics.median(r["openvino_ms"] for r in rounds)
    speedup = [r["openvino_ms"] / r["ours_ms"] for r in rounds]
    q = statistics.quantiles(speedup, n=4) if len(rounds) > 1 else speedup * 3
    return {"rounds": len(rounds), "ours_median_ms": ours, "openvino_median_ms": ov,
            "speedup_of_medians": ov / ours, "round_speedup_quartiles": q}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    cfg, x = setup(args)
    ours = compiled_pruned(args, cfg)
    ov = openvino_runtime(_build_model(args.model, cfg, "dense", 0.0), x)
    paths = {"openvino": ov, "ours": lambda: ours(x)}

    def one_round(i: int) -> dict:
        times = round_times(paths, i, warm=1, calls=1)
        return {f"{name}_ms": ms for name, ms in times.items()}

    with torch.no_grad():
        rounds = tagged_rounds(one_round, args.seconds)
    split = by_placement(rounds)
    result = {**model_fields(args), "seconds": args.seconds,
              **{p: summary(rs) for p, rs in split.items()},
              "all": summary(rounds), "environment": environment(), "rounds": rounds}  # fmt: skip
    for name in ("near", "far", "all"):
        s = result[name]
        if s:
            q = s["round_speedup_quartiles"]
            print(f"{name}: {s['rounds']} rounds, ours {s['ours_median_ms']:.2f} ms, OpenVINO "
                  f"{s['openvino_median_ms']:.2f} ms: {s['speedup_of_medians']:.2f}x "
                  f"(round quartiles {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f})")
    save(args.out, result)


if __name__ == "__main__":
    main()
