"""Merge per-model zoo runs (one process each) into one result file and table.

    python benchmarks/zoo_merge.py runs/zoo/*/zoo-*.json -o benchmarks/results/zoo-<device>.json

Each model runs in its own process (``benchmarks/quiet_run.sh zoo``): in one process, after
resnet18 at batch 8, ResNet-50 at batch 1 took 27 ms with tile@75% instead of 17 ms in a process
of its own (eager 61 instead of 45 ms, OpenVINO 26 instead of 22), which a user deploying one
model never sees. The cause was not isolated (not the allocator state of our path alone: a
process running only our resnet18 and ResNet-50 models in that order showed no slowdown).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuprune.bench import results
from gpuprune.bench.zoo import markdown_table
from gpuprune.fileio import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    meta: dict = {}
    records: list[dict] = []
    for path in args.runs:
        m, recs = results.load(path)
        meta = meta or m
        meta.setdefault("runs", []).append({"file": str(path),
                                            "environment": m.get("environment")})  # fmt: skip
        records += recs
    results.save(args.out, meta, records)
    table = markdown_table(records)
    atomic_write_text(args.out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
