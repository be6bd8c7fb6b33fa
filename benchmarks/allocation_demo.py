"""Uniform against global sparsity allocation on the demo, read at equal sparsity and at equal
measured latency: each method's cells fine-tuned from the demo's own dense model with the demo's
budget, then timed on the CPU backend in alternation with the dense model.

    python benchmarks/allocation_demo.py --dense runs/demo/dense \\
        -o benchmarks/results/allocation-demo-<device>.json

``uniform`` gives every layer the overall sparsity; ``global`` ranks blocks across all layers
(a block's score is its mean magnitude per element), so sensitive layers keep more. Training
runs in two worker processes of one thread (the demo's ``workers: 2``); the timing runs after,
alone, with two threads. Each method's accuracy at the latency of uniform ``--reference`` is
interpolated between its two cells on either side (never extrapolated).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ALLOCATIONS = ("uniform", "global")


def _cell(config: str, dense: str, runs: str, allocation: str, method: str, sparsity: float,
          seed: int | None) -> dict:  # fmt: skip
    import torch

    from gpuprune.experiment.cell import load_data, train_cell
    from gpuprune.experiment.config import load_config, parse_config

    torch.set_num_threads(1)
    d = load_config(config).model_dump()
    d["prune"]["allocation"] = allocation
    if seed is not None:  # the fine-tuning's seed (data order, subset); the dense model stays
        d["seed"] = seed
    cfg = parse_config(d)
    run = Path(runs) / f"{allocation}-seed{cfg.seed}"
    (run / "dense").exists() or shutil.copytree(dense, run / "dense")
    started = time.perf_counter()
    rec = train_cell(cfg, run, method, sparsity, load_data(cfg), progress=False)
    return {"allocation": allocation, "method": method, "sparsity": sparsity, "seed": cfg.seed,
            "status": rec["status"], "accuracy": rec.get("accuracy"),
            "flops_kept": rec.get("flops_kept"), "error": rec.get("error"),
            "model": str(run / "cells" / f"{method}-{sparsity:g}" / "model.safetensors"),
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def _time(config: str, dense: str, rows: list[dict], rounds: int) -> None:
    """Each trained cell's median CPU latency as a fraction of the dense model's (in place)."""
    import torch
    from safetensors.torch import load_file

    import gpuprune.prune as gp
    from gpuprune.bench.timing import measure_many
    from gpuprune.experiment.cell import (
        build_model,
        compile_for,
        input_shape,
        load_data,
        prunable_layers,  # fmt: skip
    )
    from gpuprune.experiment.config import load_config

    torch.set_num_threads(2)
    cfg = load_config(config)
    data = load_data(cfg)
    model = build_model(cfg, data)
    model.load_state_dict(load_file(str(Path(dense) / "model.safetensors")))
    layers = prunable_layers(cfg, model)
    ok = [r for r in rows if r["status"] == "trained"]
    kernel = {"tile": "tile", "simd": "simd"}
    models = [compile_for(model, cfg.prune.target, "cpu", layers, "tile")] + [
        compile_for(gp.load(r["model"]).model, cfg.prune.target, "cpu", layers,
                    kernel.get(r["method"], "tile")) for r in ok]  # fmt: skip
    x = torch.randn(cfg.latency.batch_size, *input_shape(data))
    with torch.no_grad():
        times = measure_many([(lambda m=m: m(x)) for m in models], warmup=3, repeats=rounds,
                             budget_s=60.0, ci_rel=0.0)  # fmt: skip
    for r, t in zip(ok, times[1:], strict=True):
        r["latency_x_dense"] = round(t.median_ms / times[0].median_ms, 4)


def _at(points: list[tuple[float, float]], latency: float) -> float | None:
    """Accuracy interpolated at ``latency`` between the points on either side (None outside)."""
    pts = sorted(points)
    for (x0, a0), (x1, a1) in zip(pts, pts[1:], strict=False):
        if x0 <= latency <= x1 and x1 > x0:
            return a0 + (latency - x0) / (x1 - x0) * (a1 - a0)
    return None


def summarise(rows: list[dict], reference: tuple[str, float]) -> dict:
    """Per seed: gaps to unstructured at each shared sparsity, and accuracy at the reference
    cell's latency per allocation and method."""
    out: dict = {}
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed and r.get("accuracy") is not None]
        acc = {(r["allocation"], r["method"], r["sparsity"]): r["accuracy"] for r in mine}
        gaps = {f"{a}/{m}@{s:g}": round((acc[(a, "unstructured", s)] - v) * 100, 2)
                for (a, m, s), v in acc.items()
                if m != "unstructured" and (a, "unstructured", s) in acc}  # fmt: skip
        ref = next((r for r in mine if (r["allocation"], r["method"], r["sparsity"])
                    == ("uniform", *reference) and "latency_x_dense" in r), None)  # fmt: skip
        at_ref = {}
        if ref is not None:
            for a in ALLOCATIONS:
                for m in sorted({r["method"] for r in mine}):
                    pts = [(r["latency_x_dense"], r["accuracy"]) for r in mine
                           if r["allocation"] == a and r["method"] == m and "latency_x_dense" in r]
                    value = _at(pts, ref["latency_x_dense"])
                    at_ref[f"{a}/{m}"] = None if value is None else round(value, 4)
        out[str(seed)] = {"gap_to_unstructured_pt": gaps,
                          "reference_latency_x_dense": ref and ref["latency_x_dense"],
                          "accuracy_at_reference_latency": at_ref}  # fmt: skip
    return out


def _grid(spec: str) -> list[tuple[str, str, float]]:
    """``uniform:tile=0.5/0.75,global:tile=0.75/0.85`` -> (allocation, method, sparsity)."""
    cells = []
    for part in spec.split(","):
        alloc, rest = part.split(":")
        method, sparsities = rest.split("=")
        cells += [(alloc, method, float(s)) for s in sparsities.split("/")]
    return cells


DEFAULT_GRID = ("uniform:tile=0.5/0.6/0.75/0.85,uniform:simd=0.5/0.75/0.85,"
                "uniform:unstructured=0.75,global:tile=0.75/0.85/0.9,"
                "global:simd=0.75/0.85/0.9,global:unstructured=0.75")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--dense", type=Path, required=True, help="a demo run's dense/ folder")
    ap.add_argument("--runs", type=Path, default=Path("runs/allocation"))
    ap.add_argument("--grid", default=DEFAULT_GRID, help="allocation:method=s1/s2,...")
    ap.add_argument("--seeds", default="0", help="fine-tuning seeds, e.g. 0,1,2")
    ap.add_argument("--reference", default="tile@0.75", help="a uniform cell: method@sparsity")
    ap.add_argument("--rounds", type=int, default=40, help="timing rounds per model")
    ap.add_argument("--retime", type=Path, nargs="*", default=[],
                    help="earlier outputs whose trained cells are timed again (no training)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    method, sparsity = args.reference.split("@")
    if args.retime:
        rows = [r for f in args.retime for r in json.loads(f.read_text())["rows"]]
    else:
        jobs = [(*c, int(s)) for s in args.seeds.split(",") for c in _grid(args.grid)]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=ctx) as pool:
            futures = [pool.submit(_cell, args.config, str(args.dense), str(args.runs), *job)
                       for job in jobs]  # fmt: skip
            rows = [f.result() for f in futures]
    _time(args.config, str(args.dense), rows, args.rounds)
    out = {"config": args.config, "reference": args.reference, "rows": rows,
           "summary": summarise(rows, (method, float(sparsity)))}  # fmt: skip
    args.output.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
