"""Accuracy at equal measured latency: every method read at the reference cell's latency.

Latency is each cell's measured end-to-end time as a fraction of the dense model's on the same
backend's tile kernel (:attr:`Row.relative`). A method's accuracy at the reference latency is
its cell within the tolerance of it, else a linear interpolation between its two cells on either
side; a method whose cells all lie on one side is reported as such, never extrapolated.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuprune.experiment.config import parse_cell
from gpuprune.report.results import Row, RunResults, Section
from gpuprune.report.verdict import noise_pt, verdict

COLUMNS = ["method", "cells", "latency (x dense)", "accuracy at reference latency",
           "vs reference (pt)", "how"]  # fmt: skip


@dataclass(frozen=True)
class AtLatency:
    """A method's accuracy read at one latency, or why it cannot be."""

    accuracy: float | None
    latency: float | None  # the cell's latency, or the reference's when interpolated
    how: str


def _config(res: RunResults) -> dict:
    return (res.summary.get("config") or {}).get("equal_latency") or {}


def reference_row(res: RunResults) -> Row | None:
    """The finished uniform cell named by ``equal_latency.reference``, if any."""
    cell = parse_cell(_config(res).get("reference") or "")
    if cell is None:
        return None
    for r in res.rows:
        if r.status == "ok" and not r.matched and (r.method, r.sparsity) == cell:
            return r
    return None


def accuracy_at(rows: list[Row], backend: str, latency: float, tolerance: float) -> AtLatency:
    """``rows``' (one method's) accuracy at ``latency`` on ``backend`` (module docstring)."""
    pts = sorted((r.relative[backend], r.accuracy, r) for r in rows
                 if r.status == "ok" and backend in r.relative)  # fmt: skip
    if not pts:
        return AtLatency(None, None, "no finished cell")
    near = min(pts, key=lambda p: abs(p[0] - latency))
    if abs(near[0] - latency) <= tolerance * latency:
        return AtLatency(near[1], near[0], f"{_name(near[2])}, measured")
    if len(pts) == 1:
        return AtLatency(None, near[0], f"{_name(near[2])}: {near[1]:.2%} at {near[0]:.3f}x, "
                                        f"not within {tolerance:.0%}")  # fmt: skip
    for (x0, a0, r0), (x1, a1, r1) in zip(pts, pts[1:], strict=False):
        if x0 <= latency <= x1 and x1 > x0:
            acc = a0 + (latency - x0) / (x1 - x0) * (a1 - a0)
            return AtLatency(acc, latency, f"interpolated: {_name(r0)} and {_name(r1)}")
    if pts[0][0] > latency:
        return AtLatency(None, pts[0][0], f"slower at every sparsity tried (fastest "
                                          f"{_name(pts[0][2])})")  # fmt: skip
    return AtLatency(None, pts[-1][0], f"faster at every sparsity tried (slowest "
                                       f"{_name(pts[-1][2])})")  # fmt: skip


def _name(r: Row) -> str:
    return r.method if r.matched else f"{r.method}@{r.sparsity:g}"


def _series(res: RunResults) -> dict[str, list[Row]]:
    """Each method's uniform cells as one series; each matched cell as its own."""
    out: dict[str, list[Row]] = {}
    for r in res.rows:
        out.setdefault(r.method, []).append(r)
    return out


def equal_latency_sections(res: RunResults) -> list[Section]:
    """One table per timed backend, with every method at the reference's measured latency."""
    ref = reference_row(res)
    if ref is None:
        return []
    tol = float(_config(res).get("tolerance", 0.05))
    sections = []
    for backend in res.backends:
        if backend not in ref.relative:
            continue
        at = ref.relative[backend]
        rows = []
        for label, series in _series(res).items():
            got = accuracy_at(series, backend, at, tol)
            cells = ", ".join(_name(r) for r in series if r.status == "ok") or "-"
            if any(r.status == "unreachable" for r in series):
                got = AtLatency(None, None, "cannot reach the reference latency (plan)")
            rows.append([
                label, cells, "-" if got.latency is None else f"{got.latency:.3f}",
                "-" if got.accuracy is None else f"{got.accuracy * 100:.2f}%",
                "-" if got.accuracy is None else f"{(got.accuracy - ref.accuracy) * 100:+.2f}",
                got.how,
            ])  # fmt: skip
        note = (
            f"Reference: {_name(ref)}, measured on {backend} at {at:.3f}x the dense model's "
            f"latency (median end-to-end, dense weights timed through the same kernel in the "
            f"same cell). A cell within {tol:.0%} of it counts as equal; otherwise the method's "
            "accuracy is interpolated between its cells on either side, never extrapolated. "
            "Rows named +latency were pruned with the latency allocation to the reference's "
            "modelled latency."
        )
        sections.append(Section(f"Accuracy at equal measured latency ({backend})", note,
                                COLUMNS, rows))  # fmt: skip
    return sections


def equal_latency_checks(res: RunResults) -> list[str]:
    """Each latency-aware cell against its method's uniform cells at the same measured latency;
    a verdict for the reference method when ``targets.latency_gain_pt`` is set."""
    ref = reference_row(res)
    if ref is None:
        return []
    tol = float(_config(res).get("tolerance", 0.05))
    goal = ((res.summary.get("config") or {}).get("targets") or {}).get("latency_gain_pt")
    series = _series(res)
    lines = []
    for r in res.rows:
        if not r.matched:
            continue
        if r.status != "ok":
            lines.append(f"{r.method}: {r.error or r.status}")
            continue
        uniform = series.get(r.base_method, [])
        for backend, lat in r.relative.items():
            base = accuracy_at(uniform, backend, lat, tol)
            if base.accuracy is None and lat <= ref.relative.get(backend, 0.0) * (1 + tol):
                # as fast as the reference or faster: the reference's accuracy is a fair bar
                base = accuracy_at(uniform, backend, ref.relative[backend], tol)
            if base.accuracy is None:
                lines.append(f"{r.method} on {backend}: {lat:.3f}x dense, no uniform "
                             f"{r.base_method} cell to compare at that latency ({base.how})")
                continue
            gain = (r.accuracy - base.accuracy) * 100
            check = ""
            if goal is not None and r.base_method == ref.method:
                noise = noise_pt(res.summary, r.base_method)
                check = f" (target >= {goal:g}): {verdict(gain - goal, noise)}"
            lines.append(
                f"{r.method} on {backend}: {r.accuracy:.2%} at {lat:.3f}x dense vs uniform "
                f"{r.base_method} {base.accuracy:.2%} at {base.latency:.3f}x ({base.how}): "
                f"{gain:+.2f} pt{check}"
            )
    return lines
