"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from gpuprune.fileio import atomic_write_bytes  # noqa: E402
from gpuprune.report.equal_latency import reference_row  # noqa: E402
from gpuprune.report.results import Row, RunResults  # noqa: E402


def _ok(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.status == "ok"]


def _style(methods: list[str]) -> dict[str, dict]:
    markers = "osD^v<>PX*h"
    cmap = plt.get_cmap("tab10")
    return {m: {"color": cmap(i % 10), "marker": markers[i % len(markers)]}
            for i, m in enumerate(methods)}  # fmt: skip


def _save(fig: plt.Figure, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def accuracy_vs_sparsity(res: RunResults, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    style = _style(res.methods)
    for m in res.methods:
        pts = sorted((r.sparsity, r.accuracy * 100) for r in _ok(res.rows) if r.method == m)
        if pts:
            ax.plot(*zip(*pts, strict=True), label=m, **style[m])
    ax.axhline(res.dense["accuracy"] * 100, color="k", ls="--", lw=1, label="dense")
    ax.set(xlabel="sparsity of the pruned layers", ylabel="test accuracy (%)",
           title="Accuracy vs sparsity")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another that is both faster and at least as accurate."""
    front: list[tuple[float, float]] = []
    best = -math.inf
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((lat, acc))
            best = acc
    return front


def accuracy_vs_latency(res: RunResults, backend: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    style = _style(res.methods)
    points = []
    for m in res.methods:
        pts = [(r.relative[backend], r.accuracy * 100) for r in _ok(res.rows)
               if r.method == m and backend in r.relative]  # fmt: skip
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=m, color=style[m]["color"],
                       marker=style[m]["marker"], zorder=3)  # fmt: skip
            points += pts
    if points:  # the dense model is the unit of the axis: its own weights through the kernel
        ax.scatter([1.0], [res.dense["accuracy"] * 100], color="k", marker="*", s=120,
                   label="dense", zorder=3)  # fmt: skip
        points.append((1.0, res.dense["accuracy"] * 100))
    ref = reference_row(res)
    if ref is not None and backend in ref.relative:
        ax.axvline(ref.relative[backend], color="grey", lw=0.8, ls="--",
                   label=f"reference {ref.method}@{ref.sparsity:g}")  # fmt: skip
    front = pareto_front(points)
    if len(front) > 1:
        ax.step(*zip(*front, strict=True), where="post", color="grey", ls=":", label="Pareto front")
    ax.set(xlabel=f"latency on {backend} (x dense, median, paired)", ylabel="test accuracy (%)",
           title=f"Accuracy vs measured latency ({backend})")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def layer_sparsity(res: RunResults, path: Path) -> Path:
    """Per-layer sparsity and skippable fraction of every method at the highest sparsity."""
    ok = _ok(res.rows)
    top = max((r.sparsity for r in ok), default=0.0)
    rows = [r for r in ok if r.sparsity == top]
    backend = res.backends[0] if res.backends else None
    names = list(res.dense.get("prunable_layers", []))
    for r in rows:  # layers a method pruned but the dense record does not list (older runs)
        names += [lay["name"] for lay in r.layers if lay["name"] not in names]
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True)
    style = _style(res.methods)
    x = range(len(names))
    for r in rows:
        by = {lay["name"]: lay for lay in r.layers}  # a layer absent here was left dense
        axes[0].plot(x, [by[n]["sparsity"] if n in by else 0.0 for n in names], label=r.method,
                     **style[r.method])  # fmt: skip
        if backend:
            skip = [by[n].get("skippable", {}).get(backend, 0.0) if n in by else 0.0
                    for n in names]  # fmt: skip
            axes[1].plot(x, skip, label=r.method, **style[r.method])
    axes[0].set(ylabel="weight sparsity", title=f"Per-layer sparsity at {top:g}")
    axes[1].set(ylabel="skippable block share", xlabel="layer",
                title=f"Per-layer share of kernel blocks skipped ({backend})")  # fmt: skip
    axes[1].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    for ax in axes:
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=3)
    return _save(fig, path)


def speedup_vs_ideal(res: RunResults, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    style = _style(res.methods)
    fills = ["full", "none", "left", "bottom"]
    top = 1.0
    for bi, backend in enumerate(res.backends):
        for m in res.methods:
            pts = [(r.ideal_speedup, r.speedup[backend]) for r in _ok(res.rows)
                   if r.method == m and backend in r.speedup]  # fmt: skip
            if not pts:
                continue
            top = max(top, *(p[0] for p in pts))
            ax.plot(*zip(*pts, strict=True), ls="", label=f"{m} ({backend})",
                    color=style[m]["color"], marker=style[m]["marker"],
                    fillstyle=fills[bi % len(fills)])  # fmt: skip
    ax.plot([1, top * 1.05], [1, top * 1.05], color="k", ls="--", lw=1, label="ideal = 1/density")
    ax.axhline(1, color="grey", lw=0.8)
    ax.set(xlabel="ideal speedup 1/density (FLOPs kept)", ylabel="measured speedup vs dense",
           title="Measured vs ideal speedup (dense weights, same backend and kernel)")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def oneshot_accuracy(res: RunResults, path: Path) -> Path | None:
    """One-shot accuracy (no fine-tuning) against sparsity, per method: magnitude (dashed) vs
    each other importance (solid), with batch-norm recalibration as hollow markers."""
    rows = [r for r in (res.summary.get("oneshot") or {}).get("rows", [])
            if isinstance(r, dict) and r.get("status") == "ok"]  # fmt: skip
    if not rows:
        return None
    methods = list(dict.fromkeys(r["method"] for r in rows))
    style = _style(methods)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in methods:
        for imp in dict.fromkeys(r["importance"] for r in rows if r["method"] == m):
            mine = sorted((r for r in rows if r["method"] == m and r["importance"] == imp),
                          key=lambda r: r["sparsity"])  # fmt: skip
            ls = "--" if imp == "magnitude" else "-"
            xs = [r["sparsity"] for r in mine]
            ax.plot(xs, [r["accuracy"] * 100 for r in mine], ls=ls, label=f"{m} {imp}",
                    **style[m])  # fmt: skip
            bn = [(r["sparsity"], r["accuracy_bn"] * 100) for r in mine if "accuracy_bn" in r]
            if bn:
                ax.plot(*zip(*bn, strict=True), ls=ls, lw=0.8, alpha=0.6, mfc="none",
                        color=style[m]["color"], marker=style[m]["marker"])  # fmt: skip
    dense = (res.summary.get("oneshot") or {}).get("dense_accuracy") or res.dense["accuracy"]
    ax.axhline(dense * 100, color="k", ls=":", lw=1, label="dense")
    ax.set(xlabel="sparsity of the pruned layers", ylabel="test accuracy (%), no fine-tuning",
           title="One-shot: magnitude (dashed) vs reconstruction (solid); hollow: + BN")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def make_plots(res: RunResults, out_dir: Path) -> dict[str, Path]:
    """Write every plot; returns {title: path}."""
    plots = {"Accuracy vs sparsity": accuracy_vs_sparsity(res, out_dir / "accuracy_sparsity.png")}
    for b in res.backends:
        plots[f"Accuracy vs latency ({b})"] = accuracy_vs_latency(
            res, b, out_dir / f"accuracy_latency_{b}.png")  # fmt: skip
    plots["Per-layer sparsity and skippable share"] = layer_sparsity(
        res, out_dir / "layer_sparsity.png")  # fmt: skip
    plots["Speedup vs ideal"] = speedup_vs_ideal(res, out_dir / "speedup_ideal.png")
    if (oneshot := oneshot_accuracy(res, out_dir / "oneshot.png")) is not None:
        plots["One-shot accuracy, no fine-tuning"] = oneshot
    return plots
