"""Where a run's wall time went, per phase, from its ``summary.json`` (no re-running).

    python benchmarks/demo_time.py runs/demo/summary.json

A run whose cells fine-tuned in worker processes records its phases' wall seconds itself
(``summary["phases"]``): those are printed. Otherwise, phases:
dense training (its recorded seconds), dense timing and everything else before the cells
(the rest of the dense phase is not recorded separately, so it falls in "other"), each cell's
fine-tuning (training and evaluation) and the rest of the cell (pruning plan, compile, latency
timing, saving), co-design, and what is left of the total (data loading, dense timing, summary).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def breakdown(summary: dict) -> list[tuple[str, float]]:
    cells = summary.get("cells", [])
    total = float(summary.get("seconds") or 0.0)
    dense = float(summary["dense"].get("seconds") or 0.0)
    ft = sum(float((c.get("finetune") or {}).get("seconds") or 0.0) for c in cells)
    cell_all = sum(float(c.get("seconds") or 0.0) for c in cells)
    evals = 0.0  # test-set passes inside fine-tuning: its time minus the epochs' training time
    for c in cells:
        f = c.get("finetune") or {}
        if f.get("history"):  # without the epochs' own times nothing can be split off
            evals += float(f.get("seconds") or 0.0) - sum(h.get("seconds", 0.0)
                                                          for h in f["history"])  # fmt: skip
    matched = sum(float(c.get("seconds") or 0.0) - float((c.get("finetune") or {}).get(
        "seconds") or 0.0) for c in cells if c.get("equal_latency"))  # fmt: skip
    codesign = float((summary.get("codesign") or {}).get("seconds") or 0.0)
    rows = [
        ("dense training", dense),
        ("cells: fine-tuning steps", ft - evals),
        ("cells: test-set evaluations", evals),
        ("cells: latency-matched planning + timing", matched),
        ("cells: compile, timing, saving (grid cells)", cell_all - ft - matched),
        ("co-design search", codesign),
    ]
    rows.append(("other (data, dense timing, summary)", total - sum(s for _, s in rows)))
    rows.append(("total", total))
    return rows


def phases(summary: dict) -> list[tuple[str, float]]:
    """Wall seconds per phase as the runner recorded them (runs with ``workers`` > 1)."""
    rows = [(name, float(s)) for name, s in (summary.get("phases") or {}).items()]
    codesign = float((summary.get("codesign") or {}).get("seconds") or 0.0)
    if rows:
        rows.append(("co-design search", codesign))
        total = float(summary.get("seconds") or 0.0)
        rows.append(("other (summary)", total - sum(s for _, s in rows)))
        rows.append(("total", total))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", type=Path)
    args = ap.parse_args()
    summary = json.loads(args.summary.read_text())
    rows = phases(summary) if summary.get("phases", {}).get("cells: timing") else breakdown(
        summary)  # fmt: skip
    total = rows[-1][1] or 1.0
    print("| phase | seconds | share |\n| --- | ---: | ---: |")
    for name, s in rows:
        print(f"| {name} | {s:.1f} | {s / total:.0%} |")


if __name__ == "__main__":
    main()
