"""How long ``prune()`` takes on big layers and real models, per method (wall and CPU seconds).

    PYTHONPATH=src python benchmarks/prune_speed.py [--label after] [--repeats 3] [--quick] [-o F]

Workloads: one Linear(25088, 4096) (103M weights, VGG's first classifier layer) pruned alone,
and torchvision's vgg11_bn and resnet50 (random weights; see zoo_models.py) at 224x224. Each
(workload, method) is timed ``--repeats`` times on a fresh copy; the median goes to ``-o``
(``benchmarks/results/prune_speed.json`` by default) under ``--label`` (so a run before and
after a change sit side by side), with the 1-minute load average at start and end. Only
``prune()`` is timed (building and copying the model are not), including the dummy forward pass
that measures FLOPs, as users see it.

CPU seconds (all threads) are what a busy host inflates least. They would also count OpenMP's
worker threads spinning between parallel ops, a few milliseconds per op: on a model of 50 layers
that idling is most of the total. So the threads sleep instead (``OMP_WAIT_POLICY=PASSIVE``)
unless the caller sets a policy; the policy is recorded with the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when OpenMP starts: before torch

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from zoo_models import zoo_missing, zoo_model  # noqa: E402

from gpuprune.prune import prune  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "prune_speed.json"
TARGETED = {"tile", "simd", "simd-balanced"}
LAYER_METHODS = ("tile", "simd", "simd-balanced", "unstructured", "filter", "ssl", "balanced",
                 "nm", "channel-perf")  # fmt: skip
MODEL_METHODS = ("tile", "simd", "unstructured")


def big_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(25088, 4096))


def time_prune(model: nn.Module, method: str, input_size, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds; CPU time (all threads) is what a busy host inflates least."""
    times, cpu = [], []
    for _ in range(repeats):
        m = copy.deepcopy(model)
        opts = {"target": "nvidia"} if method in TARGETED else {}
        t0, c0 = time.perf_counter(), time.process_time()
        prune(m, method=method, sparsity=0.75, exclude_first_last=False, input_size=input_size,
              skip_small=True, **opts)  # fmt: skip
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del m
    return statistics.median(times), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="current")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the 103M layer with tile/unstructured")
    ap.add_argument("--models", default="vgg11_bn,resnet50")
    ap.add_argument("--table", action="store_true", help="print the markdown table and exit")
    ap.add_argument("--labels", default="", help="with --table: these labels only (a,b)")
    ap.add_argument("-o", "--output", type=Path, default=RESULTS, help="results JSON")
    args = ap.parse_args()
    if args.table:
        out = json.loads(args.output.read_text())
        keep = [lab for lab in args.labels.split(",") if lab] or list(out)
        print(table({lab: out[lab] for lab in keep}))
        return
    work = [("linear_25088x4096", big_layer, (25088,),
             ("tile", "unstructured") if args.quick else LAYER_METHODS)]  # fmt: skip
    if not args.quick and zoo_missing() is None:
        for name in filter(None, args.models.split(",")):
            work.append((name, lambda n=name: zoo_model(n), (3, 224, 224), MODEL_METHODS))
    run = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "repeats": args.repeats,
        "seconds": {},
    }
    for name, build, size, methods in work:
        model = build()
        weights = sum(m.weight.numel() for m in model.modules() if hasattr(m, "weight")
                      and isinstance(m, (nn.Conv2d, nn.Linear)))  # fmt: skip
        run["seconds"][name] = {"weights": weights}
        for method in methods:
            sec, cpu = time_prune(model, method, size, args.repeats)
            run["seconds"][name][method] = round(sec, 3)
            run.setdefault("cpu_seconds", {}).setdefault(name, {})[method] = round(cpu, 3)
            print(f"{name:20s} {method:14s} {sec:8.2f} s wall {cpu:8.2f} s CPU", flush=True)
            run["load_average_end"] = os.getloadavg()
            save(args.output, args.label, run)  # every cell: an interrupted run keeps its work


def table(out: dict) -> str:
    """Markdown: one row per (workload, method); median wall and CPU seconds per label."""
    labels = list(out)
    head = ["workload", "weights", "method"]
    for lab in labels:
        head += [f"{lab} wall s", f"{lab} CPU s"]
    if len(labels) == 2:
        head.append(f"CPU {labels[0]} / {labels[1]}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = {(w, m): None for lab in labels for w, ms in out[lab]["seconds"].items()
            for m in ms if m != "weights"}  # fmt: skip
    for w, m in rows:
        weights = next(out[lab]["seconds"][w]["weights"] for lab in labels
                       if w in out[lab]["seconds"])  # fmt: skip
        cells = [w, f"{weights / 1e6:.0f}M", m]
        cpus = []
        for lab in labels:
            sec = out[lab]["seconds"].get(w, {}).get(m)
            cpus.append(out[lab].get("cpu_seconds", {}).get(w, {}).get(m))
            cells += ["-" if v is None else f"{v:.1f}" for v in (sec, cpus[-1])]
        if len(labels) == 2:
            cells.append("-" if None in cpus or not cpus[1] else f"{cpus[0] / cpus[1]:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    loads = ", ".join(
        f"{lab}: {out[lab]['load_average'][0]:.1f}-{out[lab].get('load_average_end', [0])[0]:.1f}"
        f" (OMP_WAIT_POLICY {out[lab].get('omp_wait_policy', 'not recorded')})"
        for lab in labels
    )
    return "\n".join(lines) + f"\n\n1-minute load average at start-end ({loads}).\n"


def save(path: Path, label: str, run: dict) -> None:
    out = json.loads(path.read_text()) if path.exists() else {}  # other labels are kept
    out[label] = run
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
