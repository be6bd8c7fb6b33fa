"""report.md and a self-contained report.html (plots embedded as base64 PNG) from one run."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from gpuprune.fileio import atomic_write_text
from gpuprune.report.codesign import codesign_checks, codesign_section
from gpuprune.report.crosstarget import cross_target_section
from gpuprune.report.distill_study import distill_section
from gpuprune.report.equal_latency import equal_latency_checks, equal_latency_sections
from gpuprune.report.oneshot import oneshot_checks, oneshot_section
from gpuprune.report.plots import make_plots
from gpuprune.report.results import Row, RunResults, Section, load_results
from gpuprune.report.verdict import noise_pt, verdict


def _f(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt % value


def summary_table(res: RunResults) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): the dense baseline first, then every cell."""
    backends = res.backends
    cols = ["method", "sparsity", "achieved", "FLOPs kept", "accuracy", "drop (pt)"]
    cols += [f"{b} ms" for b in backends] + [f"{b} speedup" for b in backends] + ["ideal"]
    d = res.dense
    rows = [["dense (baseline)", "0", "0", "1.000", _f(d["accuracy"] * 100, "%.2f%%"), "0.00"]
            + [_f(res.dense_latency(b), "%.3f") for b in backends]
            + ["1.00x" for _ in backends] + ["1.00x"]]  # fmt: skip
    for r in res.rows:
        if r.status != "ok":
            why = "cannot reach the reference latency" if r.status == "unreachable" else (
                "failed: " + r.error[:80])  # fmt: skip
            rows.append([r.method, _requested(res, r), why]
                        + [""] * (len(cols) - 3))  # fmt: skip
            continue
        rows.append(
            [r.method, _requested(res, r), _f(r.achieved, "%.3f"), _f(r.flops_kept, "%.3f"),
             _f(r.accuracy * 100, "%.2f%%"), _f(r.drop_pt, "%+.2f")]
            + [_f(r.latency_ms.get(b, math.nan), "%.3f") for b in backends]
            + [_f(r.speedup.get(b, math.nan), "%.2fx") for b in backends]
            + [_f(r.ideal_speedup, "%.2fx")]
        )  # fmt: skip
    return cols, rows


def _requested(res: RunResults, r: Row) -> str:
    """The sparsity asked for; a latency-matched cell asked for the reference's latency."""
    if not r.matched:
        return f"{r.sparsity:g}"
    ref = ((res.summary.get("config") or {}).get("equal_latency") or {}).get("reference")
    return f"latency of {ref}" if ref else "latency"


def target_checks(res: RunResults) -> list[str]:
    """The config's targets, stated with the measured numbers (met or not)."""
    return (_accuracy_checks(res) + oneshot_checks(res) + equal_latency_checks(res)
            + codesign_checks(res))  # fmt: skip


def _accuracy_checks(res: RunResults) -> list[str]:
    targets = res.summary.get("config", {}).get("targets") or {}
    lines = []
    dense = res.dense["accuracy"] * 100
    goal = targets.get("dense_accuracy")
    if goal is not None:
        lines.append(f"dense accuracy {dense:.2f}% (target >= {goal * 100:g}%): "
                     f"{verdict(dense - goal * 100, noise_pt(res.summary, 'dense'))}")  # fmt: skip
    at = targets.get("sparsity")
    if at is None:
        return lines
    gaps = targets.get("max_gap_pt", 1.0)
    by = {r.method: r for r in res.rows if r.status == "ok" and r.sparsity == at and not r.matched}
    un, flt = by.get("unstructured"), by.get("filter")
    for m in ("tile", "simd"):
        r = by.get(m)
        if r is None:
            continue
        noise = noise_pt(res.summary, m)
        if un is not None:
            limit = float(gaps.get(m, 1.0) if isinstance(gaps, dict) else gaps)
            gap = (un.accuracy - r.accuracy) * 100
            lines.append(f"{m} at {at:g}: {r.accuracy:.2%}, {gap:+.2f} pt below unstructured "
                         f"(target <= {limit:g}): {verdict(limit - gap, noise)}")  # fmt: skip
        if flt is not None:
            lines.append(
                f"{m} at {at:g} vs filter: {r.accuracy:.2%} (FLOPs kept {r.flops_kept:.3f}) vs "
                f"{flt.accuracy:.2%} (FLOPs kept {flt.flops_kept:.3f}): "
                f"{verdict((r.accuracy - flt.accuracy) * 100, noise, 'above', 'NOT above')}"
            )
    return lines


def _setup_lines(res: RunResults) -> list[str]:
    s, cfg = res.summary, res.summary.get("config", {})
    model, data = cfg.get("model", {}), s.get("data", {})
    lines = []
    if data:
        lines.append(f"data: {data.get('name')} ({data.get('train')} train / {data.get('test')} "
                     f"test images, {'x'.join(map(str, data.get('image', [])))}) from "
                     f"{data.get('source')}")  # fmt: skip
    if model:
        lines.append(f"model: {model.get('name')} width {model.get('width')}, "
                     f"{res.dense.get('params', 0):,} parameters")  # fmt: skip
    prune, lat = cfg.get("prune", {}), cfg.get("latency", {})
    if prune:
        lines.append(f"pruning: target {prune.get('target')}, importance {prune.get('importance')},"
                     f" allocation {prune.get('allocation')}, schedule {prune.get('schedule')}, "
                     f"first/last layers dense: {prune.get('exclude_first_last')}")  # fmt: skip
    if prune.get("permute"):
        lines.append(_permute_line(res))
    for phase in ("dense", "finetune"):
        r = cfg.get(phase)
        if r:
            kd = r.get("distill")
            lines.append(f"{phase}: {r['epochs']} epochs, batch {r['batch_size']}, lr {r['lr']} "
                         f"{r['schedule']}, label smoothing {r['label_smoothing']}"
                         + (f", distilled from the dense model (alpha {kd['alpha']}, "
                            f"temperature {kd['temperature']})" if kd else ""))  # fmt: skip
    if lat:
        early = (f" (fewer once the median's 95% interval is within {lat['ci_rel']:.0%})"
                 if lat.get("ci_rel") else "")  # fmt: skip
        lines.append(f"latency: median of up to {lat.get('repeats')} runs{early} after "
                     f"{lat.get('warmup')} warm-up, batch {lat.get('batch_size')}; speedup = "
                     "dense weights through the same backend and kernel, timed in the same "
                     "cell, / pruned")  # fmt: skip
    env = s.get("environment")
    if env:
        cpu = f"{env['cpu']} ({env.get('cpu_isa')}), " if env.get("cpu") else ""
        lines.append(f"machine: {cpu}{env.get('machine')}, {env.get('cpus')} CPUs, torch "
                     f"{env.get('torch')}; run took {s.get('seconds', 0):.0f} s")  # fmt: skip
    return lines


def _permute_line(res: RunResults) -> str:
    """Which methods' cells had their channels reordered, and what it did (or why not)."""
    done: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    for r in res.rows:
        perm = r.permutation
        if "not_applied" in perm:
            skipped[r.base_method] = perm["not_applied"]
        elif perm.get("swaps"):
            before, after = perm["kept_before"], perm["kept_after"]
            done.setdefault(r.base_method, []).append(
                (sum(after.values()) - sum(before.values())) / max(len(after), 1))
    parts = [f"{m} (+{max(g) * 100:.1f} pt of importance kept per layer)" if len(g) == 1 else
             f"{m} (+{min(g) * 100:.1f} to +{max(g) * 100:.1f} pt of importance kept per layer)"
             for m, g in done.items()]  # fmt: skip
    line = ("channels reordered before pruning (prune.permute; the dense function unchanged): "
            + (", ".join(parts) if parts else "no cell changed"))  # fmt: skip
    if skipped:
        line += "; not searched for " + ", ".join(sorted(skipped)) + " (masks not ranked blocks)"
    return line


def extra_sections(res: RunResults) -> list[Section]:
    """The tables after the results: one-shot, distillation, equal latency, co-design and
    cross-target (those with rows)."""
    found = [oneshot_section(res), distill_section(res), *equal_latency_sections(res),
             codesign_section(res), cross_target_section(res)]  # fmt: skip
    return [s for s in found if s is not None and s.rows]


def _markdown(res: RunResults, plots: dict[str, Path], sections: list[Section]) -> str:
    cols, rows = summary_table(res)
    out = [f"# Pruning experiment: {res.summary.get('name', '')}", "", "## Setup", ""]
    out += [f"- {x}" for x in _setup_lines(res)]
    cuts = res.summary.get("cuts", []) + res.summary.get("notes", [])
    if cuts:
        out += ["", "## What this run cut or notes", ""] + [f"- {x}" for x in cuts]
    out += ["", "## Results", "", "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols)]  # fmt: skip
    out += ["| " + " | ".join(r) + " |" for r in rows]
    checks = target_checks(res)
    if checks:
        out += ["", "## Targets", ""] + [f"- {x}" for x in checks]
    for sec in sections:
        out += ["", f"## {sec.title}", "", sec.note, "",
                "| " + " | ".join(sec.columns) + " |", "|" + "---|" * len(sec.columns)]
        out += ["| " + " | ".join(r) + " |" for r in sec.rows]
    out += ["", "## Plots", ""]
    for title, path in plots.items():
        out += [f"### {title}", "", f"![{title}]({path.name})", ""]
    return "\n".join(out) + "\n"


def _html(res: RunResults, plots: dict[str, Path], sections: list[Section]) -> str:
    esc = html.escape
    cols, rows = summary_table(res)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(str(res.summary.get('name', 'report')))}</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;",
        "padding:3px 6px;text-align:right}td:first-child{text-align:left}img{max-width:100%}",
        "</style></head><body>",
        f"<h1>Pruning experiment: {esc(str(res.summary.get('name', '')))}</h1><h2>Setup</h2><ul>",
    ]
    parts += [f"<li>{esc(x)}</li>" for x in _setup_lines(res)] + ["</ul>"]
    cuts = res.summary.get("cuts", []) + res.summary.get("notes", [])
    if cuts:
        parts += ["<h2>What this run cut or notes</h2><ul>"]
        parts += [f"<li>{esc(x)}</li>" for x in cuts] + ["</ul>"]
    parts += ["<h2>Results</h2><table><tr>"] + [f"<th>{esc(c)}</th>" for c in cols] + ["</tr>"]
    for r in rows:
        parts += ["<tr>"] + [f"<td>{esc(c)}</td>" for c in r] + ["</tr>"]
    parts += ["</table>"]
    checks = target_checks(res)
    if checks:
        parts += ["<h2>Targets</h2><ul>"] + [f"<li>{esc(x)}</li>" for x in checks] + ["</ul>"]
    for sec in sections:
        parts += [f"<h2>{esc(sec.title)}</h2>", f"<p>{esc(sec.note)}</p><table><tr>"]
        parts += [f"<th>{esc(c)}</th>" for c in sec.columns] + ["</tr>"]
        for r in sec.rows:
            parts += ["<tr>"] + [f"<td>{esc(c)}</td>" for c in r] + ["</tr>"]
        parts += ["</table>"]
    parts += ["<h2>Plots</h2>"]
    for title, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h3>{esc(title)}</h3><img alt='{esc(title)}' "
                     f"src='data:image/png;base64,{data}'>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and the PNG plots into ``run_dir``.

    Returns:
        ``{"markdown": path, "html": path, "plots": [paths], "table": (cols, rows)}``.
    """
    res = load_results(run_dir)
    plots = make_plots(res, res.run_dir)
    sections = extra_sections(res)
    md, page = res.run_dir / "report.md", res.run_dir / "report.html"
    atomic_write_text(md, _markdown(res, plots, sections))
    atomic_write_text(page, _html(res, plots, sections))
    return {"markdown": md, "html": page, "plots": list(plots.values()),
            "table": summary_table(res), "checks": target_checks(res)}  # fmt: skip
