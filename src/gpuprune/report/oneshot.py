"""The report's one-shot section: accuracy with no fine-tuning, magnitude against reconstruction.

Reads ``summary["oneshot"]`` (written by :mod:`gpuprune.experiment.oneshot`); runs without it
show nothing. *Recovered* is the share of the accuracy magnitude pruning loses that ``obs`` wins
back: ``(obs - magnitude) / (dense - magnitude)``.
"""

from __future__ import annotations

import math
from typing import Any

from gpuprune.report.results import RunResults, Section

TITLE = "One-shot pruning (no fine-tuning)"
RECOVER_AT = 0.5  # the sparsity the recovery target is read at
RECOVER_SHARE = 0.5  # obs must win back at least this share of magnitude's loss there
CHECKED = ("tile", "simd")


def _rows(res: RunResults) -> list[dict[str, Any]]:
    rec = res.summary.get("oneshot")
    rows = rec.get("rows") if isinstance(rec, dict) else None
    return [r for r in rows or [] if isinstance(r, dict)]


def _acc(rows: list[dict[str, Any]], method: str, sparsity: float, importance: str,
         field: str = "accuracy") -> float:  # fmt: skip
    for r in rows:
        if (r.get("method"), r.get("sparsity"), r.get("importance")) == (method, sparsity,
                                                                         importance):
            value = r.get(field)
            return float(value) if isinstance(value, int | float) else math.nan
    return math.nan


def recovered(res: RunResults, method: str, sparsity: float, field: str = "accuracy") -> float:
    """Share of magnitude's one-shot accuracy loss that obs wins back (NaN if not measured)."""
    rows = _rows(res)
    rec = res.summary.get("oneshot") or {}
    dense = float(rec.get("dense_accuracy") or res.dense.get("accuracy", math.nan))  # same images
    mag = _acc(rows, method, sparsity, "magnitude", field)
    obs = _acc(rows, method, sparsity, "obs", field)
    lost = dense - mag
    return (obs - mag) / lost if lost > 0 else math.nan


def _pct(value: float) -> str:
    return f"{value:.2%}" if math.isfinite(value) else "-"


def oneshot_section(res: RunResults) -> Section | None:
    rows = _rows(res)
    if not rows:
        return None
    cells = list(dict.fromkeys((r["method"], r["sparsity"]) for r in rows))
    imps = list(dict.fromkeys(r["importance"] for r in rows))
    bn = any("accuracy_bn" in r for r in rows)
    cols = ["cell", *imps, *(f"{i} + BN" for i in imps if bn)]
    both = {"magnitude", "obs"} <= set(imps)
    if both:
        cols.append("recovered")
    table = []
    for method, sparsity in cells:
        line = [f"{method}@{sparsity:g}"]
        line += [_pct(_acc(rows, method, sparsity, i)) for i in imps]
        if bn:
            line += [_pct(_acc(rows, method, sparsity, i, "accuracy_bn")) for i in imps]
        if both:
            share = recovered(res, method, sparsity)
            line.append(f"{share:.0%}" if math.isfinite(share) else "-")
        table.append(line)
    rec = res.summary.get("oneshot") or {}
    failed = [f"{r['method']}@{r['sparsity']:g} {r['importance']}: {r.get('error')}"
              for r in rows if r.get("status") != "ok"]  # fmt: skip
    dense = float(rec.get("dense_accuracy") or res.dense.get("accuracy", math.nan))
    note = (f"The dense model ({_pct(dense)}) pruned once, "
            "uniformly, and evaluated without any training"
            + (f" on {rec['test_images']} test images" if rec.get("test_images") else "")
            + ". `obs` chooses the blocks by the layer "
            f"output error on {rec.get('calibration_images', '?')} calibration images and re-fits "
            "the kept weights, layer by layer; `+ BN` re-estimates batch-norm statistics after. "
            "Recovered: the share of magnitude's accuracy loss that obs wins back.")  # fmt: skip
    if failed:
        note += " Failed: " + "; ".join(failed)
    return Section(TITLE, note, cols, table)


def oneshot_checks(res: RunResults) -> list[str]:
    """The recovery target at 50% for tile and simd, stated with the measured share."""
    lines = []
    for method in CHECKED:
        share = recovered(res, method, RECOVER_AT)
        if math.isfinite(share):
            verdict = "met" if share >= RECOVER_SHARE else "NOT met"
            lines.append(f"one-shot {method}@{RECOVER_AT:g}: obs recovers {share:.0%} of the "
                         f"accuracy magnitude loses (target >= {RECOVER_SHARE:.0%}): "
                         f"{verdict}")  # fmt: skip
    return lines
