"""The demo's dense recipe over several seeds: the accuracy spread behind ``targets.noise_pt``.

    python benchmarks/demo_seeds.py [--config configs/demo.yaml] [--seeds 0 1 2] \
        [--save-dense runs/seeds] [-o benchmarks/results/demo-seeds.json]

Trains the config's dense model (``dense:`` recipe, same data and model) once per seed and
records each seed's test accuracy and epoch times, with the CPU, its SIMD level and the thread
count: accuracies repeat exactly for one seed on one machine, and move between seeds and between
SIMD levels. ``--isa avx2`` sets ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` before torch
loads, so an AVX-512 machine computes as an AVX2 one does (close, not bit-identical).
Each seed is a separate process when ``--parallel`` is given (one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _train(config: str, seed: int, save: str | None) -> dict:
    import torch

    from gpuprune.bench.environment import cpu_isa, cpu_name
    from gpuprune.experiment import load_config
    from gpuprune.experiment.cell import build_model, load_data
    from gpuprune.train import fit

    cfg = load_config(config).model_copy(update={"seed": seed})
    data = load_data(cfg)
    model = build_model(cfg, data)
    started = time.perf_counter()
    cpu0 = time.process_time()
    res = fit(model, data, cfg.dense.train_config(seed), progress=False, desc=f"seed {seed}")
    if save:
        from safetensors.torch import save_file

        Path(save).mkdir(parents=True, exist_ok=True)
        model.cpu().eval()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(Path(save) / f"dense-seed{seed}.safetensors"))  # fmt: skip
    return {
        "seed": seed,
        "accuracy": res.test_acc,
        "epoch_accuracy": [h["test_acc"] for h in res.history],
        "epoch_seconds": [h["seconds"] for h in res.history],
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu0,
        "cpu": cpu_name(),
        "cpu_isa": cpu_isa(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--isa", choices=["avx2"], help="compute as on an AVX2 machine")
    ap.add_argument("--parallel", action="store_true", help="one process per seed, 1 thread each")
    ap.add_argument("--save-dense", help="folder for each seed's dense weights")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a worker: train this seed only
    ap.add_argument("-o", "--output", default="benchmarks/results/demo-seeds.json")
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(_train(args.config, args.one, args.save_dense)))
        return
    env = dict(os.environ)
    if args.isa == "avx2":
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    if args.parallel:
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, __file__, "--config", args.config]
    if args.save_dense:
        cmd += ["--save-dense", args.save_dense]
    procs = []
    runs = []
    for seed in args.seeds:
        p = subprocess.Popen([*cmd, "--one", str(seed)], env=env, stdout=subprocess.PIPE, text=True)
        if args.parallel:
            procs.append(p)
        else:
            runs.append(json.loads(p.communicate()[0].strip().splitlines()[-1]))
    runs += [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    accs = [r["accuracy"] for r in runs]
    out = {
        "config": args.config,
        "isa_setting": args.isa,
        "parallel": args.parallel,
        "load_average": os.getloadavg(),
        "runs": runs,
        "mean": statistics.mean(accs),
        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "spread_pt": (max(accs) - min(accs)) * 100,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.output).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(args.output)
    print(f"accuracy {out['mean']:.2%} mean, spread {out['spread_pt']:.2f} pt (max-min), "
          f"std {out['std'] * 100:.2f} pt over seeds {args.seeds}")  # fmt: skip


if __name__ == "__main__":
    main()
