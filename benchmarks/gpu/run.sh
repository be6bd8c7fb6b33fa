#!/usr/bin/env bash
# GPU benchmark of the Triton skip kernels (see benchmarks/gpu/run.py and README.md).
#   benchmarks/gpu/run.sh             on a CUDA GPU, under 8 minutes (--budget-s 420 by default)
#   benchmarks/gpu/run.sh --dry-run   on the CPU: Triton interpreter, tiny shapes, valid JSON
#   benchmarks/gpu/run.sh --recipe    then the full VGG16 CIFAR-10 recipe (hours, not minutes)
# Other options go to run.py (--out, --models, --batches, --sparsities, --dtypes, --budget-s).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
recipe=0
args=()
for a in "$@"; do
  if [ "$a" = "--recipe" ]; then recipe=1; else args+=("$a"); fi
done
"$PYTHON" benchmarks/gpu/run.py "${args[@]}"
if [ "$recipe" = 1 ]; then
  "$PYTHON" -m gpuprune.cli.main run configs/vgg16-cifar10.yaml --out runs/vgg16-cifar10-gpu
fi
