"""Read a run folder into plain rows: the dense baseline and one row per cell, with the derived
numbers the report shows (accuracy drop, FLOPs kept over the whole model, speedups)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuprune.errors import UserError


@dataclass(frozen=True)
class Section:
    """A titled table of the report (markdown and HTML render it alike)."""

    title: str
    note: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Row:
    """One cell of the experiment, as the report sees it."""

    method: str
    sparsity: float  # requested
    status: str
    error: str = ""
    accuracy: float = float("nan")
    drop_pt: float = float("nan")  # dense accuracy minus this, in percentage points
    achieved: float = float("nan")  # sparsity over the pruned layers
    flops_kept: float = float("nan")  # share of the whole model's GEMM FLOPs left
    latency_ms: dict[str, float] = field(default_factory=dict)  # backend -> median
    # dense weights through the same backend and kernel (timed in the cell) / this
    speedup: dict[str, float] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    base_method: str = ""  # the pruning method (``method`` is the label: "tile+latency")
    matched: bool = False  # pruned to the reference cell's latency (equal_latency)
    # latency / the dense model's on the backend's tile kernel (paired timing, variant-scaled)
    relative: dict[str, float] = field(default_factory=dict)
    variant: str = ""  # the kernel variant the cell's method runs on (stored by the cell)
    # this cell's model packed for every preset target (computed in the cell): rows of
    # {target, variant, block, skippable, dense_ms, modelled_ms, modelled_speedup}
    cross_target: list[dict[str, Any]] = field(default_factory=list)
    permutation: dict[str, Any] = field(default_factory=dict)  # prune.permute's summary, if on

    @property
    def ideal_speedup(self) -> float:
        """1 / density: the speedup if time were proportional to the FLOPs kept."""
        return 1.0 / self.flops_kept if self.flops_kept > 0 else float("nan")


@dataclass
class RunResults:
    """The whole run: metadata, dense baseline and the rows."""

    run_dir: Path
    summary: dict[str, Any]
    dense: dict[str, Any]
    rows: list[Row]

    @property
    def backends(self) -> list[str]:
        return list(self.summary.get("config", {}).get("latency", {}).get("backends", []))

    @property
    def methods(self) -> list[str]:
        seen: list[str] = []
        for r in self.rows:
            if r.method not in seen:
                seen.append(r.method)
        return seen

    def dense_latency(self, backend: str) -> float:
        """The dense model's best time on ``backend`` (fastest kernel variant, dense weights)."""
        lat = self.dense.get("latency", {}).get(backend, {})
        times = [v["median_ms"] for v in lat.values() if isinstance(v, dict) and "median_ms" in v]
        return min(times) if times else float("nan")


def _model_flops_kept(cell: dict[str, Any], flops: dict[str, int]) -> float:
    total = sum(flops.values())
    if not total:
        return float(cell.get("flops_kept", float("nan")))
    saved = sum(lay["flops_dense"] - lay["flops_kept"] for lay in cell.get("layers", []))
    return (total - saved) / total


def _relative(dense: dict[str, Any], cell: dict[str, Any], backend: str,
              lat: dict[str, Any]) -> float:  # fmt: skip
    """The cell's latency as a fraction of the dense model's on the backend's tile kernel.

    The cell timed the dense weights through its own kernel variant next to the pruned model
    (``dense_ms``), which cancels a machine getting busier during the run; the dense record's
    variant times then put SIMD-kernel cells on the same scale as tile-kernel ones.
    """
    variant = cell["variant"]  # the kernel the cell ran, as it recorded it
    times = dense.get("latency", {}).get(backend, {})
    own, tile = times.get(variant, {}).get("median_ms"), times.get("tile", {}).get("median_ms")
    scale = own / tile if own and tile else 1.0
    paired = lat.get("dense_ms") or own or float("nan")
    return lat["median_ms"] / paired * scale


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path} is damaged ({type(exc).__name__})",
            "rerun 'gpuprune run CONFIG -o RUN_DIR': it rebuilds damaged results",
        ) from None


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    if not path.exists():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__})",
                        "rerun 'gpuprune run CONFIG -o RUN_DIR': it writes it again") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a mapping of config keys",
                        "rerun 'gpuprune run CONFIG -o RUN_DIR': it writes it again")
    return config


def load_results(run_dir: str | Path) -> RunResults:
    """Read ``summary.json`` (or, for an unfinished run, ``dense/`` and ``cells/``).

    Raises:
        UserError: the files are missing, damaged or malformed (wrong keys or types).
    """
    run = Path(run_dir)
    try:
        return _load_results(run)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        what = f"missing key {exc}" if isinstance(exc, KeyError) else "a value of the wrong type"
        raise UserError(f"the results in {run} are malformed ({what})",
                        "rerun 'gpuprune run CONFIG -o RUN_DIR': it rebuilds them") from None


def _load_results(run: Path) -> RunResults:
    path = run / "summary.json"
    if path.exists():
        summary = _read_json(path)
        if not isinstance(summary, dict):
            raise UserError(f"{path} is not a mapping",
                            "rerun 'gpuprune run CONFIG -o RUN_DIR': it rebuilds it")
    elif (run / "dense" / "result.json").exists():
        config = _read_config(run / "config.yaml")
        cells = [_read_json(p) for p in sorted((run / "cells").glob("*.json"))]
        summary = {"name": config.get("name", run.name), "config": config, "cuts": [],
                   "notes": ["the run has not finished: partial results"], "cells": cells,
                   "dense": _read_json(run / "dense" / "result.json")}  # fmt: skip
    else:
        raise UserError(f"{run} holds no experiment results",
                        "run 'gpuprune run CONFIG -o RUN_DIR' first")  # fmt: skip
    dense = summary["dense"]
    res = RunResults(run, summary, dense, [])
    for cell in summary.get("cells", []):
        matched = bool(cell.get("equal_latency"))
        label = f"{cell['method']}+latency" if matched else cell["method"]
        row = Row(label, float(cell["sparsity"]), cell.get("status", "failed"),
                  cell.get("error", ""), base_method=cell["method"], matched=matched)  # fmt: skip
        if row.status == "ok":
            row.accuracy = cell["accuracy"]
            row.drop_pt = (dense["accuracy"] - cell["accuracy"]) * 100
            row.achieved = cell["achieved_sparsity"]
            row.flops_kept = _model_flops_kept(cell, dense.get("flops", {}))
            row.layers = cell.get("layers", [])
            row.variant = cell.get("variant", "")
            row.cross_target = cell.get("cross_target", [])
            row.permutation = cell.get("permutation", {})
            for backend, lat in cell.get("latency", {}).items():
                row.latency_ms[backend] = lat["median_ms"]
                base = lat.get("dense_ms", res.dense_latency(backend))
                row.speedup[backend] = base / lat["median_ms"]
                row.relative[backend] = _relative(dense, cell, backend, lat)
        res.rows.append(row)
    return res
