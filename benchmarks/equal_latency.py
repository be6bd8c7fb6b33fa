"""Latency-aware vs uniform tile pruning at equal measured latency, over several seeds.

    python benchmarks/equal_latency.py --checkpoint runs/demo/dense/model.safetensors \
        [--config configs/demo.yaml] [--seeds 0 1 2] [-o benchmarks/results/equal-latency.json]

Runs the experiment pipeline (``gpuprune run``) once per seed on the same trained dense model:
uniform ``tile`` at the config's sparsities and ``tile+latency`` matched to ``tile@0.75``. The
seed changes the fine-tuning subset and order and the sensitivity batches, not the dense model.
Per seed it reports both accuracies and the latency-aware cell's gain over uniform tile read at
its measured latency (the report's rule: within the tolerance, else interpolated). Then the two
pruned models of each seed are timed end to end in alternation, many rounds, to check that the
latencies really are equal. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from gpuprune.bench.environment import environment
from gpuprune.experiment import load_config, parse_config, run_experiment
from gpuprune.experiment.cell import build_model, load_data, prunable_layers
from gpuprune.experiment.latency import compile_for, time_models
from gpuprune.fileio import atomic_write_text
from gpuprune.report import load_results
from gpuprune.report.equal_latency import accuracy_at


def seed_config(base: dict, checkpoint: str, seed: int, backend: str) -> dict:
    cfg = json.loads(json.dumps(base))
    cfg.update(seed=seed, name=f"equal latency, seed {seed}")
    cfg["model"]["checkpoint"] = checkpoint
    cfg["prune"]["methods"] = ["tile"]
    cfg["prune"]["sparsities_for"] = {}  # the demo's other methods are not run here
    cfg.pop("oneshot", None)  # nor its studies
    cfg.pop("distill_study", None)
    cfg["latency"]["backends"] = [backend]
    cfg["equal_latency"] = {**cfg.get("equal_latency", {}), "reference": "tile@0.75",
                            "methods": ["tile"], "backend": backend}  # fmt: skip
    cfg["codesign"] = {"backend": None}
    return cfg


def alternate(run: Path, backend: str, rounds: int) -> dict:
    """Median ms of uniform tile@0.75 and tile+latency, timed in alternation."""
    import gpuprune.prune as gp

    cfg = load_config(run / "config.yaml")
    data = load_data(cfg)
    models = []
    for name in ("tile-0.75", "tile-latency"):
        model = build_model(cfg, data)
        gp.load_pruned(run / "cells" / name / "model.safetensors", model)
        layers = prunable_layers(cfg, model)
        models.append(compile_for(model.eval(), cfg.prune.target, backend, layers, "tile"))
    lat = cfg.latency.model_copy(update={"repeats": rounds, "budget_s": 1e9})
    uni, aware = time_models(models, (data.in_channels, *data.image_size), lat, cfg.seed)
    return {"uniform_ms": uni["median_ms"], "latency_aware_ms": aware["median_ms"],
            "ratio": aware["median_ms"] / uni["median_ms"], "rounds": rounds}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="trained dense model (.safetensors)")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--rounds", type=int, default=41, help="alternating timing rounds")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temp dir)")
    ap.add_argument("-o", "--out", default="benchmarks/results/equal-latency.json")
    args = ap.parse_args()
    base = load_config(args.config).model_dump()
    work = Path(args.work or tempfile.mkdtemp(prefix="equal-latency-"))
    seeds = []
    for seed in args.seeds:
        cfg = parse_config(seed_config(base, args.checkpoint, seed, args.backend))
        run = work / f"seed-{seed}"
        run_experiment(cfg, run)
        res = load_results(run)
        uniform = [r for r in res.rows if r.method == "tile"]
        aware = next(r for r in res.rows if r.method == "tile+latency")
        if aware.status != "ok":
            seeds.append({"seed": seed, "status": aware.status, "error": aware.error})
            continue
        lat = aware.relative[args.backend]
        base_acc = accuracy_at(uniform, args.backend, lat, cfg.equal_latency.tolerance)
        ref = next(r for r in uniform if r.sparsity == 0.75)
        seeds.append({
            "seed": seed,
            "uniform": {str(r.sparsity): {"accuracy": r.accuracy,
                                          "relative_latency": r.relative[args.backend]}
                        for r in uniform},
            "latency_aware": {"accuracy": aware.accuracy, "relative_latency": lat,
                              "sparsity": aware.achieved},
            "uniform_at_that_latency": {"accuracy": base_acc.accuracy, "how": base_acc.how},
            "gain_pt": None if base_acc.accuracy is None else
            (aware.accuracy - base_acc.accuracy) * 100,
            "gain_vs_tile_0.75_pt": (aware.accuracy - ref.accuracy) * 100,
            "alternating": alternate(run, args.backend, args.rounds),
        })  # fmt: skip
        print(json.dumps(seeds[-1], indent=1))
    gains = [s["gain_vs_tile_0.75_pt"] for s in seeds if "gain_vs_tile_0.75_pt" in s]
    ratios = [s["alternating"]["ratio"] for s in seeds if "alternating" in s]
    out = {
        "config": args.config, "checkpoint": args.checkpoint, "backend": args.backend,
        "seeds": seeds,
        "mean_gain_vs_tile_0.75_pt": statistics.mean(gains) if gains else None,
        "min_gain_vs_tile_0.75_pt": min(gains) if gains else None,
        "median_latency_ratio_aware_over_uniform": statistics.median(ratios) if ratios else None,
        "environment": environment(),
    }  # fmt: skip
    atomic_write_text(Path(args.out), json.dumps(out, indent=1))
    print(f"wrote {args.out}: mean gain {out['mean_gain_vs_tile_0.75_pt']} pt, "
          f"latency ratio {out['median_latency_ratio_aware_over_uniform']}")  # fmt: skip


if __name__ == "__main__":
    main()
