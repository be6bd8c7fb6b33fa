"""Accuracy recovery: one-shot magnitude vs OBS, and fine-tuning with and without distillation.

    gpuprune run configs/recovery.yaml -o runs/recovery                  # dense, one-shot, cells
    gpuprune run configs/recovery-distill.yaml -o runs/recovery-distill  # same dense, distilled
    gpuprune run configs/recovery-obs.yaml -o runs/recovery-obs          # OBS once + distilled
    python benchmarks/recovery.py runs/recovery runs/recovery-distill runs/recovery-obs \
        -o benchmarks/results/recovery.json

Prints the one-shot table (first run folder with a one-shot study) and the fine-tuned accuracy of
each run's cells side by side, with the issue's targets stated against the measured numbers,
and writes them as one JSON file.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gpuprune.fileio import atomic_write_text
from gpuprune.report import load_results
from gpuprune.report.oneshot import oneshot_section, recovered


def _finetuned(run: Path) -> dict[str, float]:
    res = load_results(run)
    return {f"{r.method}@{r.sparsity:g}": r.accuracy for r in res.rows if r.status == "ok"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    out: dict = {"runs": {}, "oneshot": None, "targets": []}
    for run in args.runs:
        res = load_results(run)
        out["runs"][str(run)] = {"name": res.summary.get("name"),
                                 "dense": res.dense["accuracy"], "cells": _finetuned(run)}
        sec = oneshot_section(res)
        if sec is not None and out["oneshot"] is None:
            out["oneshot"] = {"columns": sec.columns, "rows": sec.rows,
                              "dense": res.dense["accuracy"]}
            print(f"one-shot, dense {res.dense['accuracy']:.2%}")
            print("| " + " | ".join(sec.columns) + " |\n|" + "---|" * len(sec.columns))
            for row in sec.rows:
                print("| " + " | ".join(row) + " |")
            for method in ("tile", "simd"):
                share = recovered(res, method, 0.5)
                if math.isfinite(share):
                    out["targets"].append(
                        f"one-shot {method}@0.5: obs recovers {share:.0%} of magnitude's loss "
                        f"(target >= 50%): {'met' if share >= 0.5 else 'NOT met'}")
    print("\nfine-tuned accuracy")
    cells = sorted({c for r in out["runs"].values() for c in r["cells"]})
    print("| run | dense | " + " | ".join(cells) + " |\n|" + "---|" * (len(cells) + 2))
    for r in out["runs"].values():
        accs = " | ".join(f"{r['cells'][c]:.2%}" if c in r["cells"] else "-" for c in cells)
        print(f"| {r['name']} | {r['dense']:.2%} | {accs} |")
        un = r["cells"].get("unstructured@0.75")
        for method, limit in (("tile", 2.0), ("simd", 1.0)):
            acc = r["cells"].get(f"{method}@0.75")
            if un is not None and acc is not None:
                gap = (un - acc) * 100
                out["targets"].append(
                    f"{r['name']}: {method}@0.75 {gap:+.2f} pt below unstructured "
                    f"(target <= {limit:g}): {'met' if gap <= limit else 'NOT met'}")
    print()
    for line in out["targets"]:
        print("-", line)
    if args.output:
        atomic_write_text(args.output, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
