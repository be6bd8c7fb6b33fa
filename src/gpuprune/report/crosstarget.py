"""The cross-target view: what one pruned model of the run would skip, and save, on every preset.

A model pruned for one GPU can be compiled for any other (a block is kept unless it is all zero),
so each cell packs its own pruned model for every preset target, with its kernel variant, and
stores the rows (``cross_target`` in the cell record). The report shows them for the tile and
SIMD cells nearest the run's headline sparsity; it reads the stored rows only.
"""

from __future__ import annotations

from gpuprune.report.results import RunResults, Section

COLUMNS = ["model", "on target", "block", "skippable", "modelled speedup"]
NOTE = (
    "The run's tile and SIMD models compiled for every preset: a block is skipped only where it "
    "is all zero in that target's block shape; speedup from the analytical latency model."
)
SHOWN = ("tile", "simd")  # the cells the view shows: GPU tile and SIMD-vector pruning


def cross_target_rows(res: RunResults) -> list[list[str]]:
    """Rows of :data:`COLUMNS` for the run's tile and SIMD cells at its target sparsity."""
    config = res.summary.get("config") or {}
    sparsity = float((config.get("targets") or {}).get("sparsity") or 0.75)
    rows = []
    for method in SHOWN:
        done = [r for r in res.rows if r.method == method and r.status == "ok" and r.cross_target]
        if not done:
            continue
        cell = min(done, key=lambda r: abs(r.sparsity - sparsity))
        for r in cell.cross_target:
            rows.append([
                f"{method} @ {cell.sparsity:g}", r["target"], r["block"],
                f"{r['skippable']:.3f}", f"{r['modelled_speedup']:.2f}x",
            ])  # fmt: skip
    return rows


def cross_target_section(res: RunResults) -> Section:
    return Section("Cross-target view", NOTE, COLUMNS, cross_target_rows(res))
