"""The report's co-design section: each layer's fastest tiling against the target's preset.

Reads ``summary["codesign"]`` (written by :mod:`gpuprune.experiment.codesign_step`); runs
without it (co-design off, or summaries from before it existed) show nothing.
"""

from __future__ import annotations

import math
from typing import Any

from gpuprune.report.results import RunResults, Section

TITLE = "Tile co-design"
COLUMNS = ["layer", "GEMM M x K x N", "preset ms", "best tiling", "best ms", "speedup"]
FASTER = 1.10  # a layer counts when its best tiling is at least 10% faster than the preset


def _record(res: RunResults) -> dict[str, Any] | None:
    rec = res.summary.get("codesign")
    return rec if isinstance(rec, dict) else None


def _target_name(rec: dict[str, Any]) -> str:
    target = rec.get("target")
    return str(target.get("name", "?")) if isinstance(target, dict) else str(target)


def _num(value: Any) -> float:
    """A stored number, or NaN for anything else (a hand-edited or damaged record)."""
    return float(value) if isinstance(value, int | float) else math.nan


def _ms(value: Any) -> str:
    return f"{_num(value):.3f}" if math.isfinite(_num(value)) else "-"


def _tiling(name: str, preset: str) -> str:
    """The word "preset", or the tiling part of a candidate's name (``cpu-pocl@64x32x16/8x8``)."""
    return "preset" if name == preset else name.partition("@")[2] or name


def _note(rec: dict[str, Any]) -> str:
    """What was timed and how the speedup was obtained, in one paragraph."""
    device = f" ({rec['device']})" if rec.get("device") else ""
    variant, sparsity = rec.get("variant", "tile"), rec.get("sparsity", 0.0)
    weights = "unpruned weights"
    if variant != "dense":
        weights = f"weights with {sparsity:g} of each tiling's own {variant} blocks pruned"
    failed = {n for row in rec.get("layers", []) for n in row.get("failed") or {}}
    cannot = f" {len(failed)} sampled tilings could not run on the device." if failed else ""
    return (
        f"Each prunable layer of the dense model timed on {rec.get('backend', '?')}{device} at "
        f"batch {rec.get('batch', '?')} with the {variant} kernel and {weights}: candidates are "
        f"the {_target_name(rec)} preset plus {rec.get('candidates', '?')} sampled tilings "
        f"(MWGxNWGxKWG/MDIMCxNDIMC, seed {rec.get('seed', '?')}), the same sample for every "
        f"layer. The fastest was then re-timed alternately with the preset; times and speedup "
        f"(preset / best) are from those re-timings.{cannot} The cells above were pruned with the "
        f"preset's blocks, not these tilings."
    )


def codesign_section(res: RunResults) -> Section | None:
    """One row per layer: GEMM shape, preset time, best tiling, its time and the speedup."""
    rec = _record(res)
    if rec is None:
        return None
    preset = _target_name(rec)
    rows = []
    for row in rec.get("layers", []):
        m, k, n = row.get("gemm", ["?"] * 3)
        speedup = _num(row.get("speedup"))
        rows.append([
            str(row.get("layer", "?")), f"{m} x {k} x {n}", _ms(row.get("preset_ms")),
            _tiling(str(row.get("best", "")), preset), _ms(row.get("best_ms")),
            f"{speedup:.2f}x" if math.isfinite(speedup) else "-",
        ])  # fmt: skip
    return Section(TITLE, _note(rec), COLUMNS, rows)


def codesign_checks(res: RunResults) -> list[str]:
    """How many layers have a tiling >= 10% faster; met or not when ``codesign_share`` is set."""
    rec = _record(res)
    targets = (res.summary.get("config") or {}).get("targets") or {}
    share = targets.get("codesign_share")
    if rec is None:
        if share is None:
            return []
        return [f"co-design (target >= {share * 100:.3g}% of layers >= 10% faster): not "
                "measured, co-design did not run (see the notes)"]  # fmt: skip
    layers = rec.get("layers", [])
    faster = sum(_num(row.get("speedup")) >= FASTER for row in layers)
    line = (f"co-design on {rec.get('backend', '?')}: {faster} of {len(layers)} layers have a "
            f"tiling >= 10% faster than the {_target_name(rec)} preset")  # fmt: skip
    if share is None:
        return [line]
    if not layers:
        return [f"{line} (target >= {share * 100:.3g}%): NOT met (no layers timed)"]
    verdict = "met" if faster / len(layers) >= share else "NOT met"
    return [f"{line} (target >= {share * 100:.3g}%): {verdict}"]
