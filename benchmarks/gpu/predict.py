"""What the analytical latency model predicts for VGG16's convolutions on an NVIDIA preset.

Prints markdown tables (the ones in benchmarks/gpu/README.md): per layer, the modelled dense
time of the tiled skip kernel and the speedups of tile and SIMD skipping over that dense walk
at 50/75/90% of blocks pruned. The model is gpuprune.latency.analytical: float32 FMA throughput
and bandwidth of the preset's device, no tensor cores, no cuDNN; a prior, not a measurement.

    PYTHONPATH=src python benchmarks/gpu/predict.py [--target nvidia]
"""

from __future__ import annotations

import argparse

from gpuprune.arch import get_target
from gpuprune.bench.workloads import VGG16_CONVS
from gpuprune.latency.analytical import analytical_ms
from gpuprune.latency.geometry import LayerGeometry

KEPT = (0.5, 0.25, 0.1)  # 50, 75, 90% pruned


def table(target, scale: int, batch: int) -> str:
    lines = [f"VGG16 {32 * scale}x{32 * scale}, batch {batch}, target {target.name}", "",
             "| layer | c_in->c_out | side | dense ms | tile 50/75/90% | simd 50/75/90% |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    total = [0.0] * 7
    for i, (cin, cout, side) in enumerate(VGG16_CONVS):
        s = side * scale
        g = LayerGeometry(f"conv{i + 1}", "conv", cout, cin * 9, cin, batch, (s, s), (3, 3),
                          (1, 1), (1, 1))  # fmt: skip
        ms = [analytical_ms(g, target, "dense")]
        ms += [analytical_ms(g, target, v, kept) for v in ("tile", "simd") for kept in KEPT]
        total = [a + b for a, b in zip(total, ms, strict=True)]
        lines.append(row(f"conv{i + 1}", f"{cin}->{cout}", str(s), ms))
    lines.append(row("all 13", "", "", total))
    return "\n".join(lines)


def row(name: str, chans: str, side: str, ms: list[float]) -> str:
    tile = " / ".join(f"{ms[0] / x:.2f}" for x in ms[1:4])
    simd = " / ".join(f"{ms[0] / x:.2f}" for x in ms[4:7])
    return f"| {name} | {chans} | {side} | {ms[0]:.3f} | {tile} | {simd} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--target", default="nvidia")
    target = get_target(p.parse_args().target)
    for scale, batch in ((1, 16), (1, 64), (7, 16)):
        print(table(target, scale, batch), end="\n\n")


if __name__ == "__main__":
    main()
