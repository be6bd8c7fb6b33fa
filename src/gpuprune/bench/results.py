"""Benchmark result files (JSON, one record per measurement), summary tables and PNG plots."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from gpuprune.errors import UserError
from gpuprune.fileio import atomic_open, atomic_write_text

README_START = "<!-- bench-table:start -->"
README_END = "<!-- bench-table:end -->"


def save(path: str | Path, meta: dict, records: list[dict]) -> None:
    atomic_write_text(path, json.dumps({"meta": meta, "records": records}, indent=1) + "\n")


def load(path: str | Path) -> tuple[dict, list[dict]]:
    try:
        data = json.loads(Path(path).read_text())
        return data["meta"], data["records"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"cannot read benchmark results {path}: {err}", "run 'gpuprune bench' to make them"
        ) from None


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def gemm_summary(records: list[dict]) -> list[dict]:
    """Per (batch, sparsity, method, backend): medians over layers."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("kind") == "gemm":
            groups[(r["batch"], r["sparsity"], r["method"], r["backend"])].append(r)
    rows = []
    for (batch, sparsity, method, backend), rs in sorted(groups.items()):
        rows.append(
            {
                "batch": batch,
                "sparsity": sparsity,
                "method": method,
                "backend": backend,
                "layers": len(rs),
                "median_ms": _median([r["median_ms"] for r in rs]),
                "speedup": _median([r.get("speedup") for r in rs]),
                "speedup_vs_torch_dense": _median([r.get("speedup_vs_torch_dense") for r in rs]),
                "efficiency": _median([r.get("efficiency") for r in rs]),
                "ideal": _median([r["ideal_speedup"] for r in rs]),
                "packed_vs_dense_bytes": _median(
                    [r["packed_bytes"] / r["dense_bytes"] for r in rs if r["method"] != "dense"]
                ),
            }
        )
    return rows


def e2e_table(records: list[dict], shown=lambda s: True) -> list[str]:
    """Markdown rows of the end-to-end runs, led by the speedup against the fastest dense path.

    Per (model, batch): the dense paths fastest first, then the pruned ones by method.
    """
    e2e = [r for r in records if r.get("kind") == "e2e" and shown(r["sparsity"])]
    if not e2e:
        return []
    lines = [
        "| model | batch | method | sparsity | backend | median ms | vs fastest dense "
        "| fastest dense | vs eager PyTorch | vs own dense | ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in e2e:
        groups[(r.get("model", "vgg16"), r["batch"])].append(r)
    for (model, batch), rs in groups.items():
        rs = sorted(rs, key=lambda r: (r["method"] != "dense", r["sparsity"], r["method"],
                                       r["median_ms"]))  # fmt: skip
        for r in rs:
            lines.append(
                f"| {model} | {batch} | {r['method']} | {r['sparsity']:g} | {r['backend']} | "
                f"{_fmt(r['median_ms'])} | {_fmt(r.get('speedup_vs_best_dense'))} | "
                f"{r.get('best_dense_runtime') or '-'} | "
                f"{_fmt(r.get('speedup_vs_torch_dense'))} | {_fmt(r.get('speedup'))} | "
                f"{_fmt(r.get('ideal_speedup'))} |"
            )
    return lines


def markdown_table(
    meta: dict,
    records: list[dict],
    batch: int | None = None,
    sparsities: tuple[float, ...] | None = None,
) -> str:
    """The README tables: end-to-end runs against the fastest dense runtime first, then GEMM
    medians over VGG16 layers.

    ``sparsities`` keeps only those rows (plus dense); the result folder keeps the full table.
    """

    def shown(s: float) -> bool:
        return sparsities is None or s == 0 or any(abs(s - x) < 1e-9 for x in sparsities)

    rows = gemm_summary(records)
    if batch is None and rows:
        batch = 16 if any(r["batch"] == 16 for r in rows) else rows[0]["batch"]
    env = meta.get("environment", {})
    lines = [
        f"Measured on {env.get('cpu', '?')} ({env.get('cpu_isa', '?')}, "
        f"{env.get('cpu_threads', '?')} threads, load "
        f"average {_fmt(env.get('load_avg_1m'), 1)} at the start), OpenCL device "
        f"{env.get('opencl_device') or 'none'}, torch {env.get('torch', '?')}, commit "
        f"{env.get('commit') or '?'}.",
    ]
    e2e = e2e_table(records, shown)
    if e2e:
        lines += [
            "",
            "End to end, every path timed in turn in one run, each timed call back to back "
            "after untimed ones, with an idle between paths (medians; all at fp32, OpenVINO "
            "pinned to it). *vs fastest dense* is against the fastest dense path measured "
            "(eager PyTorch, OpenVINO, ONNX Runtime, torch.compile); `*-masked` rows are a "
            "runtime running the pruned model's zeros densely.",
            "",
            *e2e,
        ]
    gemm = [r for r in rows if r["batch"] == batch and shown(r["sparsity"])]
    if gemm:
        lines += [
            "",
            f"GEMM rows: median over {meta.get('layers_desc', 'layers')} at batch {batch}; "
            "speedup is against the same backend's dense kernel.",
            "",
            "| level | method | sparsity | backend | median ms | speedup | ideal | efficiency "
            "| vs torch dense |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for r in gemm:
        lines.append(
            f"| GEMM | {r['method']} | {r['sparsity']:g} | {r['backend']} | "
            f"{_fmt(r['median_ms'])} | {_fmt(r['speedup'])} | {_fmt(r['ideal'])} | "
            f"{_fmt(r['efficiency'])} | {_fmt(r['speedup_vs_torch_dense'])} |"
        )
    skipped = [r for r in records if r.get("kind") == "skipped"]
    for s in skipped:
        for name, why in s["runners"].items():
            lines.append(f"\n`{name}` not measured: {why}")
    return "\n".join(lines) + "\n"


def update_readme(readme: str | Path, table: str) -> bool:
    """Replace the text between the bench-table markers of ``readme``; False if none there."""
    path = Path(readme)
    text = path.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write_text(path, f"{head}{README_START}\n{table}{README_END}{tail}")
    return True


def _save_png(fig, path: Path) -> None:
    # atomically, like every file gpuprune writes: a killed run never leaves half a PNG
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)


def plot(records: list[dict], out_dir: str | Path, batch: int | None = None) -> list[Path]:
    """PNG plots: speedup vs sparsity per method and backend, and per-layer bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in gemm_summary(records) if r["method"] != "dense"]
    if not rows:
        return []
    batch = batch or (16 if any(r["batch"] == 16 for r in rows) else rows[0]["batch"])
    rows = [r for r in rows if r["batch"] == batch]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r["speedup"] is not None:
            series[(r["method"], r["backend"])].append((r["sparsity"], r["speedup"]))
    for i, ((method, backend), pts) in enumerate(sorted(series.items())):
        pts.sort()
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="os^vD"[i % 5],
            color=plt.cm.tab20(i % 20),  # more series than the default 10-colour cycle
            label=f"{method} / {backend}",
        )
    xs = sorted({r["sparsity"] for r in rows})
    ax.plot(xs, [1 / (1 - s) for s in xs], "k--", label="ideal 1/density")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("speedup vs same backend dense (median over layers)")
    ax.set_yscale("log")
    ax.set_title(f"GEMM speedup vs sparsity, VGG16 layers, batch {batch}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths.append(out / "speedup_vs_sparsity.png")
    _save_png(fig, paths[-1])
    plt.close(fig)

    per_layer = [
        r
        for r in records
        if r.get("kind") == "gemm" and r["batch"] == batch and r["method"] != "dense"
    ]
    if per_layer:
        s75 = min({r["sparsity"] for r in per_layer}, key=lambda s: abs(s - 0.75))
        per_layer = [r for r in per_layer if r["sparsity"] == s75 and r.get("speedup")]
        layers = sorted({r["layer"] for r in per_layer}, key=lambda n: int(n[4:]))
        keys = sorted({(r["method"], r["backend"]) for r in per_layer})
        fig, ax = plt.subplots(figsize=(max(7, len(layers) * 0.8), 4.5))
        width = 0.8 / max(len(keys), 1)
        for i, key in enumerate(keys):
            vals = {
                r["layer"]: r["speedup"] for r in per_layer if (r["method"], r["backend"]) == key
            }
            ax.bar(
                [j + i * width for j in range(len(layers))],
                [vals.get(lay, 0) for lay in layers],
                width,
                label=f"{key[0]} / {key[1]}",
            )
        ax.axhline(1 / (1 - s75), color="k", ls="--", lw=0.8, label="ideal")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers, rotation=45)
        ax.set_ylabel("speedup vs same backend dense")
        ax.set_title(f"Per-layer speedup at {s75:g} sparsity, batch {batch}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        paths.append(out / "per_layer_speedup.png")
        _save_png(fig, paths[-1])
        plt.close(fig)
    return paths
