"""The demo's table as mean and spread over several full runs (one per seed), from their
``summary.json`` files (no re-running).

    python benchmarks/demo_spread.py runs/demo-seed0 runs/demo-seed1 runs/demo-seed2 \\
        -o benchmarks/results/demo-spread-<device>.json

Per cell: the mean accuracy, its spread (max - min) and each seed's value, and the same for the
CPU latency relative to the dense weights through the same kernel. The runs must be the same
config except ``seed`` (checked). Prints the markdown table README quotes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _load(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _cell_name(c: dict, ref: str | None) -> tuple[str, str]:
    if c.get("equal_latency"):
        return f"{c['method']}+latency", f"latency of {ref}"
    return c["method"], f"{c['sparsity']:g}"


def spread(summaries: list[dict], backend: str = "cpu") -> dict:
    configs = [{k: v for k, v in s["config"].items() if k != "seed"} for s in summaries]
    if any(c != configs[0] for c in configs[1:]):
        raise SystemExit("the runs differ in more than the seed: compare runs of one config")
    ref = (configs[0].get("equal_latency") or {}).get("reference")
    rows: dict[tuple[str, str], dict] = {("dense (baseline)", "0"): {
        "accuracy": [s["dense"]["accuracy"] for s in summaries], "latency": [1.0] * len(summaries)}}
    for s in summaries:
        for c in s["cells"]:
            row = rows.setdefault(_cell_name(c, ref), {"accuracy": [], "latency": []})
            if c.get("status") == "ok":
                row["accuracy"].append(c["accuracy"])
                lat = (c.get("latency") or {}).get(backend) or {}
                if lat.get("dense_ms"):
                    row["latency"].append(lat["median_ms"] / lat["dense_ms"])
            else:
                row.setdefault("status", c.get("status"))
    out = []
    for (method, sparsity), r in rows.items():
        item = {"method": method, "sparsity": sparsity, "accuracy": r["accuracy"],
                "latency": r["latency"], "status": r.get("status", "ok")}  # fmt: skip
        for key in ("accuracy", "latency"):
            if r[key]:
                item[f"{key}_mean"] = statistics.fmean(r[key])
                item[f"{key}_spread"] = max(r[key]) - min(r[key])
        out.append(item)
    return {"seeds": [s["config"]["seed"] for s in summaries], "backend": backend,
            "environment": summaries[0].get("environment"),
            "seconds": [s.get("seconds") for s in summaries], "rows": out}  # fmt: skip


def markdown(result: dict) -> str:
    n = len(result["seeds"])
    lines = [f"| method | sparsity | accuracy, mean ± half-range ({n} seeds) | per seed | "
             f"latency on {result['backend'].upper()} (x dense), mean ± half-range |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        if "accuracy_mean" not in r:
            why = "cannot reach it" if r["status"] == "unreachable" else r["status"]
            lines.append(f"| {r['method']} | {r['sparsity']} | {why} | | |")
            continue
        seeds = " / ".join(f"{a:.2%}" for a in r["accuracy"])
        lat = (f"{r['latency_mean']:.3f} ± {r['latency_spread'] / 2:.3f}"
               if "latency_mean" in r else "-")  # fmt: skip
        lines.append(f"| {r['method']} | {r['sparsity']} | {r['accuracy_mean']:.2%} ± "
                     f"{r['accuracy_spread'] * 50:.2f} pt | {seeds} | {lat} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="finished run folders, one per seed")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    result = spread([_load(r) for r in args.runs], args.backend)
    table = markdown(result)
    if args.output:
        args.output.write_text(json.dumps({**result, "markdown": table}, indent=1))
    print(table)


if __name__ == "__main__":
    main()
