"""Which pruning recipe closes the demo's gap to unstructured? tile, simd and unstructured at 75%
fine-tuned from the demo's own dense model with the demo's budget, under other recipes.

    python benchmarks/recipes_demo.py --dense runs/demo/dense \\
        -o benchmarks/results/recipes-demo-<device>.json

Recipes (everything else as configs/demo.yaml): ``magnitude-agp`` (the demo's), ``obs-agp`` (OBS
reconstruction at every AGP step), ``obs-oneshot`` (OBS once at the final sparsity, then
fine-tuning); ``--recipes ft-1x24000,ft-2x12000`` cuts the fine-tuning by 20% instead;
``ramp-0.25``, ``ramp-0.75``, ``agp-every-2`` and ``lr-0.04`` schedule the same budget
otherwise. Two worker processes of one thread, as the demo's ``workers: 2``; accuracies only, so
a busy machine changes nothing but the wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RECIPES = {  # config section -> keys changed
    "magnitude-agp": {},
    "obs-agp": {"prune": {"importance": "obs"}},
    "obs-oneshot": {"prune": {"importance": "obs", "schedule": "one-shot", "schedule_options": {}}},
    # the demo's fine-tuning cut by 20%: what fitting the 10 minutes that way would cost
    "ft-1x24000": {"finetune": {"epochs": 1, "train_subset": 24000}},
    "ft-2x12000": {"finetune": {"epochs": 2, "train_subset": 12000}},
    # the same budget, scheduled otherwise: AGP's ramp ends sooner or later, masks move every
    # 2 steps instead of 10, or the fine-tuning learning rate doubles
    "ramp-0.25": {"prune": {"ramp": 0.25}},
    "ramp-0.75": {"prune": {"ramp": 0.75}},
    "agp-every-2": {"prune": {"schedule_options": {"frequency": 2}}},
    "lr-0.04": {"finetune": {"lr": 0.04}},
}
METHODS = ["tile", "simd", "unstructured"]


def _cell(config: str, dense: str, runs: str, recipe: str, method: str, sparsity: float) -> dict:
    import torch

    from gpuprune.experiment.cell import load_data, train_cell
    from gpuprune.experiment.config import load_config, parse_config

    torch.set_num_threads(1)
    d = load_config(config).model_dump()
    for section, change in RECIPES[recipe].items():
        d[section].update(change)
    cfg = parse_config(d)
    run = Path(runs) / f"{recipe}-{method}"
    if not (run / "dense").exists():
        run.mkdir(parents=True, exist_ok=True)
        shutil.copytree(dense, run / "dense")
    started = time.perf_counter()
    rec = train_cell(cfg, run, method, sparsity, load_data(cfg), progress=False)
    return {"recipe": recipe, "method": method, "status": rec["status"],
            "accuracy": rec.get("accuracy"), "error": rec.get("error"),
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--dense", type=Path, required=True, help="a demo run's dense/ folder")
    ap.add_argument("--runs", type=Path, default=Path("runs/recipes"))
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--recipes", default="magnitude-agp,obs-agp,obs-oneshot")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    jobs = [(r, m) for r in args.recipes.split(",") for m in METHODS]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = [pool.submit(_cell, args.config, str(args.dense), str(args.runs), r, m,
                               args.sparsity) for r, m in jobs]  # fmt: skip
        rows = [f.result() for f in futures]
    acc = {(r["recipe"], r["method"]): r["accuracy"] for r in rows}
    gaps = {}
    for recipe in args.recipes.split(","):
        un = acc.get((recipe, "unstructured"))
        gaps[recipe] = {m: round((un - acc[(recipe, m)]) * 100, 2) for m in ("tile", "simd")
                        if un is not None and acc.get((recipe, m)) is not None}  # fmt: skip
    out = {"config": args.config, "sparsity": args.sparsity, "rows": rows,
           "gap_to_unstructured_pt": gaps}  # fmt: skip
    args.output.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
