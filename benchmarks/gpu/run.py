"""GPU benchmark: the Triton skip kernels against cuDNN, PyTorch BSR and 2:4 sparsity.

One run, side by side on one GPU, written as JSON in the ``benchmarks/results/`` schema
(``{"meta": ..., "records": [...]}``, records of kind "gemm" per layer and "e2e" per model):

* models: VGG16 at full width on 32x32 (CIFAR) and 224x224 inputs, ResNet-50 on 224x224;
* per layer (each distinct layer shape once) and end to end, at batch 1, 16 and 64;
* gpuprune tile and SIMD variants at 50/75/90% of their blocks pruned, and the same kernel's dense
  walk, in float16 and float32 (TF32 when PyTorch uses it);
* baselines at the same precision: cuDNN dense (NCHW and channels_last, the faster is the
  reference), PyTorch BSR ``bsr_dense_mm`` on the im2col columns at the tile block, and 2:4
  semi-structured sparsity (``to_sparse_semi_structured``) where the GPU supports it.

Work runs in priority order (batch 16 at 75% first) within ``--budget-s``; what the budget does
not reach is listed in the result as skipped, never dropped silently. Every kernel output is
checked against cuDNN once per layer and the error is stored with the timing.

    benchmarks/gpu/run.sh                 # on a CUDA GPU: ~7 minutes
    benchmarks/gpu/run.sh --dry-run       # on the CPU: Triton interpreter, tiny shapes

Weights are random with random block masks at the exact sparsity (speed does not depend on the
values); accuracy comes from the recipe (``--recipe`` runs configs/vgg16-cifar10.yaml after).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("vgg16-cifar", "vgg16-224", "resnet50")
SPARSITIES = (0.5, 0.75, 0.9)
BATCHES = (16, 64, 1)  # priority order


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--dry-run", action="store_true",
                   help="CPU only: Triton interpreter, tiny models; checks the logic end to end")
    p.add_argument("--out", type=Path, default=None,
                   help="result JSON (default benchmarks/results/gpu/<device>.json)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    p.add_argument("--dtypes", default="float16,float32")
    p.add_argument("--target", default="detect", help="preset name or 'detect'")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting new work after this many seconds")
    p.add_argument("--no-e2e", action="store_true", help="per-layer measurements only")
    return p.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.dry_run:  # before anything imports triton: @triton.jit decides at import time
        os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gpu import Bench  # noqa: PLC0415 - after TRITON_INTERPRET is set

    bench = Bench(args)
    bench.run()
    path = bench.save()
    print(f"wrote {path} ({len(bench.records)} records, {len(bench.skipped)} skipped items, "
          f"{time.perf_counter() - bench.start:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
