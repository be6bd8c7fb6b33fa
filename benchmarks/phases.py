"""Our tile path and OpenVINO's dense path call after call for a while, on ResNet-50 (or VGG16):
whether our slow phases coincide with OpenVINO's, and their ratio round by round.

On the 2-core VMs the full benchmark's per-call times of our path are bimodal: phases of
seconds in which the same compiled model runs about 1.6x slower, in a process with no other
runtime too. Each round here times one call of each, after one untimed call of each, so both
see the same phase. Prints and writes (``-o``) the medians, the count of our slow rounds (over
1.3x our fastest), OpenVINO's median inside and outside them, and the quartiles of the
per-round speedup.

    python benchmarks/phases.py --model resnet50 --batch 1 --seconds 60 \\
        -o benchmarks/results/phases-resnet50-b1.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from cpu_paths import add_model_arguments, compiled_pruned, save, setup

from gpuprune.bench.dense_runtimes import openvino_runtime
from gpuprune.bench.e2e_bench import _build_model
from gpuprune.bench.environment import environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "resnet50")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    cfg, x = setup(args)
    ours = compiled_pruned(args, cfg)
    ov = openvino_runtime(_build_model(args.model, cfg, "dense", 0.0), x)
    times: dict[str, list[float]] = {"ours": [], "openvino": []}
    end = time.perf_counter() + args.seconds
    with torch.no_grad():
        while time.perf_counter() < end:
            for name, fn in (("ours", lambda: ours(x)), ("openvino", ov)):
                fn()
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    a, b = times["ours"], times["openvino"]
    slow = {i for i, t in enumerate(a) if t > 1.3 * min(a)}
    speedup = [o / t for t, o in zip(a, b, strict=True)]
    result = {
        "model": args.model, "method": args.method, "sparsity": args.sparsity, "batch": args.batch,
        "rounds": len(a),
        "ours_median_ms": statistics.median(a), "ours_min_ms": min(a),
        "openvino_median_ms": statistics.median(b), "openvino_min_ms": min(b),
        "ours_slow_rounds": len(slow),
        "openvino_median_in_our_slow_rounds_ms":
            statistics.median([b[i] for i in slow]) if slow else None,
        "openvino_median_in_the_others_ms":
            statistics.median([t for i, t in enumerate(b) if i not in slow]),
        "speedup_over_openvino_quartiles": statistics.quantiles(speedup, n=4),
        "environment": environment(),
    }  # fmt: skip
    q = result["speedup_over_openvino_quartiles"]
    print(f"{len(a)} rounds: ours {result['ours_median_ms']:.2f} ms (min {min(a):.2f}), "
          f"OpenVINO {result['openvino_median_ms']:.2f} ms; {len(slow)} slow rounds of ours; "
          f"speedup quartiles {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}")
    save(args.out, result)


if __name__ == "__main__":
    main()
