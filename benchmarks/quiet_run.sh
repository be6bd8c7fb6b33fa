#!/usr/bin/env bash
# Every CPU measurement the README quotes, one after another, on a machine with nothing else
# running (check `uptime` first). Each step writes its own JSON/markdown under benchmarks/results;
# the log says when each started and the load average then.
#   bash benchmarks/quiet_run.sh [steps...]   steps: demo runtimes profiles zoo prune-speed
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
steps=${*:-demo runtimes profiles zoo prune-speed}
# results of different SIMD levels (the same CPU name with AVX2 or AVX-512) are kept apart
isa=$($BIN/python -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())")
# profiles are named by the host too, so another machine's run never replaces them
device=$($BIN/python -c "from gpuprune.bench.environment import device_slug, environment; print(device_slug(environment()))")
# and by the CPU family where /proc/cpuinfo has one: VMs of two AMD generations both call
# themselves "AMD EPYC" (family 25 is Zen 3/4, 26 Zen 5), and their speeds differ by 2x
family=$(awk -F': ' '/^cpu family/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
host=$device${family:+-f$family}
stamp() { echo "== $1 at $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"; }
for step in $steps; do
  stamp "$step"
  case $step in
    demo)  # training's OpenMP pools sleep between steps instead of spinning on 2 cores
      out=runs/demo-timed-$(date -u +%Y%m%d-%H%M%S)  # a new folder: nothing reused
      OMP_WAIT_POLICY=PASSIVE /usr/bin/time -f "demo wall %e s" \
        $BIN/gpuprune run configs/demo.yaml -o "$out"
      $BIN/python benchmarks/demo_time.py "$out/summary.json" ;;
    runtimes)  # each run writes <out>/<device>.json/.md, kept as <model>-<device>-<isa>[-<run>]
      # VGG16 three times, each its own process: this VM's speed drifts between processes by
      # up to a fifth, more than within one run, so the spread is reported with the ratios
      for run in 1 2 3; do
        $BIN/gpuprune bench --no-gemm --e2e-models vgg16 --e2e-width 0.5 --e2e-batches 16,1 \
          --e2e-methods tile,simd --e2e-sparsities 0.75 --threads 2 --repeats 15 \
          -o runs/runtimes/vgg16-$run
      done
      $BIN/gpuprune bench --no-gemm --e2e-models resnet50 --e2e-batches 1,16 \
        --e2e-methods tile,simd --e2e-sparsities 0.75 --threads 2 --repeats 5 \
        -o runs/runtimes/resnet50
      for dir in vgg16-1 vgg16-2 vgg16-3 resnet50; do
        for f in runs/runtimes/$dir/*.json runs/runtimes/$dir/*.md; do
          name=$(basename "$f"); model=${dir%-*}; run=${dir#"$model"}
          cp "$f" "benchmarks/results/runtimes/$model-$host-$isa$run.${name##*.}"
        done
      done ;;
    profiles)  # JSON with -o, the tables from stdout
      for b in 1 16; do
        $BIN/python benchmarks/profile_cpu.py --model vgg16 --width 0.5 --batch $b --threads 2 \
          -o benchmarks/results/profile/vgg16-w0.5-b$b-tile75-$host-$isa.json \
          | tee benchmarks/results/profile/vgg16-w0.5-b$b-tile75-$host-$isa.md
      done
      for b in 1 16; do
        $BIN/python benchmarks/profile_cpu.py --model resnet50 --batch $b --threads 2 --repeats 5 \
          -o benchmarks/results/profile/resnet50-b$b-tile75-$host-$isa.json \
          | tee benchmarks/results/profile/resnet50-b$b-tile75-$host-$isa.md
      done ;;
    zoo)  # each model its own process (see zoo_merge.py), merged as results/zoo-<host>-<isa>
      rm -rf runs/zoo
      for model in resnet18 resnet50 mobilenet_v2 efficientnet_b0 convnext_tiny vit_tiny; do
        PYTHONPATH=src $BIN/python benchmarks/zoo.py --batches 1,8 --zoo-models $model \
          -o runs/zoo/$model
      done
      PYTHONPATH=src $BIN/python benchmarks/zoo_merge.py runs/zoo/*/zoo-*.json \
        -o "benchmarks/results/zoo-$host-$isa.json" ;;
    prune-speed)
      $BIN/python benchmarks/prune_speed.py --label quiet --repeats 1 ;;
  esac
done
stamp done
