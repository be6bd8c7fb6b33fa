"""The report's distillation section: the same cells fine-tuned with and without distillation.

Reads ``summary["distill_study"]`` (written by :mod:`gpuprune.experiment.distill_study`); runs
without it show nothing. Where the study holds unstructured and tile or simd, the gap to
unstructured is given both ways, since that gap is what the accuracy targets read.
"""

from __future__ import annotations

import math
from typing import Any

from gpuprune.report.results import RunResults, Section
from gpuprune.report.verdict import noise_pt

TITLE = "Fine-tuning with and without distillation"


def _acc(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _pct(value: float) -> str:
    return f"{value:.2%}" if math.isfinite(value) else "-"


def distill_section(res: RunResults) -> Section | None:
    study = res.summary.get("distill_study")
    rows = [r for r in (study or {}).get("rows") or [] if isinstance(r, dict)]
    if not rows:
        return None
    by = {r.get("method"): r for r in rows}
    table, gains = [], []
    for r in rows:
        without, with_ = _acc(r.get("without")), _acc(r.get("with"))
        gain = (with_ - without) * 100
        gains += [gain] if math.isfinite(gain) else []
        line = [f"{r['method']}@{r['sparsity']:g}", _pct(without), _pct(with_),
                f"{gain:+.2f}" if math.isfinite(gain) else "-"]  # fmt: skip
        un = by.get("unstructured")
        for arm in ("without", "with"):
            gap = (_acc(un.get(arm)) - _acc(r.get(arm))) * 100 if un and un is not r else math.nan
            line.append(f"{gap:.2f}" if math.isfinite(gap) else "-")
        table.append(line)
    default = study.get("default", "without")
    failed = [f"{r['method']}@{r['sparsity']:g}: {r['error']}" for r in rows if r.get("error")]
    note = (f"Each cell fine-tuned twice with the same budget: with plain labels, and with "
            f"distillation from the dense model (alpha {study.get('alpha')}, temperature "
            f"{study.get('temperature')}). The run's own cells use the recipe {default} "
            "distillation; the other column comes from the study's extra fine-tuning. Gains and "
            "gaps (to unstructured at the same sparsity) are in points.")  # fmt: skip
    noise = noise_pt(res.summary)
    if noise is not None:
        inside = all(abs(g) < noise for g in gains)
        verdict = ("every gain here is within that noise." if inside
                   else "a gain beyond it is a measured effect.")  # fmt: skip
        note += (f" Accuracies move by up to {noise:g} points between seeds and CPUs "
                 f"(targets.noise_pt): {verdict}")
    if failed:
        note += " Failed: " + "; ".join(failed)
    cols = ["cell", "without distillation", "with distillation", "gain (pt)",
            "gap to unstructured, without", "gap, with"]  # fmt: skip
    return Section(TITLE, note, cols, table)
