"""Does distillation help the demo's fine-tuning? tile, simd and unstructured at 75%, with and
without ``finetune.distill``, from the demo's own dense model; everything else as the demo.

    python benchmarks/distill_demo.py --dense runs/demo/dense --runs runs/distill \\
        -o benchmarks/results/distill-demo-<device>.json

``--dense`` is a finished demo run's ``dense/`` folder (copied, so both runs start from the same
weights without retraining). Accuracies only: no timing, so a busy machine changes nothing but
the wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from gpuprune.experiment import load_config, run_experiment
from gpuprune.experiment.config import DistillSection

METHODS = ["tile", "simd", "unstructured"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--dense", type=Path, required=True, help="a demo run's dense/ folder")
    ap.add_argument("--runs", type=Path, default=Path("runs/distill"))
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    base = load_config(args.config)
    rows: dict[str, dict] = {}
    for mode in ("off", "on"):
        cfg = base.model_copy(deep=True)
        cfg.prune.methods, cfg.prune.sparsities = METHODS, [args.sparsity]
        cfg.equal_latency.reference, cfg.equal_latency.methods = None, []
        cfg.codesign.backend, cfg.oneshot.methods, cfg.latency.backends = None, [], []
        if mode == "on":
            cfg.finetune.distill = DistillSection(alpha=args.alpha, temperature=args.temperature)
        run = args.runs / f"distill-{mode}"
        if not (run / "dense").exists():
            run.mkdir(parents=True, exist_ok=True)
            shutil.copytree(args.dense, run / "dense")
        summary = run_experiment(cfg, run, progress=True)
        dense = summary["dense"]["accuracy"]
        for c in summary["cells"]:
            rows.setdefault(c["method"], {})[f"distill_{mode}"] = c["accuracy"]
    for m in ("tile", "simd"):
        for mode in ("off", "on"):
            rows[m][f"gap_to_unstructured_pt_distill_{mode}"] = round(
                (rows["unstructured"][f"distill_{mode}"] - rows[m][f"distill_{mode}"]) * 100, 2)
    for v in rows.values():
        v["gain_pt"] = round((v["distill_on"] - v["distill_off"]) * 100, 2)
    out = {"config": args.config, "workers": base.workers, "sparsity": args.sparsity,
           "dense_accuracy": dense, "rows": rows,
           "distill": {"alpha": args.alpha, "temperature": args.temperature}}
    args.output.write_text(json.dumps(out, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
