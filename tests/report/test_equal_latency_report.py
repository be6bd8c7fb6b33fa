"""Accuracy at equal measured latency: measured, interpolated, one-sided and unreachable rows,
and the latency-aware gain stated with its verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuprune.report import load_results, target_checks, write_report
from gpuprune.report.equal_latency import accuracy_at, equal_latency_sections


def _cell(method: str, sparsity: float, acc: float, ms: float, dense_ms: float = 10.0,
          matched: bool = False, variant: str = "tile") -> dict:  # fmt: skip
    return {"method": method, "sparsity": sparsity, "status": "ok", "accuracy": acc,
            "achieved_sparsity": sparsity, "flops_kept": 1 - sparsity, "layers": [],
            "variant": variant, "equal_latency": matched,
            "latency": {"cpu": {"median_ms": ms, "dense_ms": dense_ms}}}  # fmt: skip


def _write(tmp_path: Path, cells: list[dict], gain: float | None = 0.5) -> Path:
    summary = {
        "name": "fake", "cells": cells,
        "config": {"latency": {"backends": ["cpu"]},
                   "equal_latency": {"reference": "tile@0.75", "tolerance": 0.05},
                   "targets": {"latency_gain_pt": gain}},
        "dense": {"accuracy": 0.92, "flops": {},
                  "latency": {"cpu": {"tile": {"median_ms": 10.0},
                                      "simd": {"median_ms": 12.0}}}},
    }  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def _grid() -> list[dict]:
    return [
        _cell("tile", 0.5, 0.90, 6.0), _cell("tile", 0.75, 0.84, 4.0),
        # simd's own dense kernel is 1.2x slower: 5.0 / 10 * 1.2 = 0.6 and 0.36
        _cell("simd", 0.5, 0.91, 5.0, variant="simd"), _cell("simd", 0.75, 0.87, 3.0,
                                                               variant="simd"),
        _cell("unstructured", 0.5, 0.915, 9.5), _cell("unstructured", 0.75, 0.90, 9.0),
    ]  # fmt: skip


def test_relative_latency_is_paired_and_scaled_by_variant(tmp_path: Path) -> None:
    res = load_results(_write(tmp_path, _grid()))
    by = {(r.method, r.sparsity): r for r in res.rows}
    assert by["tile", 0.75].relative["cpu"] == pytest.approx(0.4)
    assert by["simd", 0.5].relative["cpu"] == pytest.approx(0.6)


def test_every_method_read_at_the_reference_latency(tmp_path: Path) -> None:
    sec = equal_latency_sections(load_results(_write(tmp_path, _grid())))[0]
    rows = {r[0]: r for r in sec.rows}
    assert "0.400x" in sec.note and "tile@0.75" in sec.note
    assert rows["tile"][3] == "84.00%" and rows["tile"][5] == "tile@0.75, measured"
    # simd at 0.4: between 0.36 (87%) and 0.6 (91%) -> 87 + (0.04/0.24)*4
    assert rows["simd"][3] == f"{87 + 4 / 6:.2f}%" and rows["simd"][5].startswith("interpolated")
    assert rows["simd"][4] == f"{87 + 4 / 6 - 84:+.2f}"
    assert rows["unstructured"][3] == "-" and rows["unstructured"][5].startswith("slower")


def test_latency_aware_gain_with_verdict(tmp_path: Path) -> None:
    cells = _grid() + [_cell("tile", 0.75, 0.853, 4.1, matched=True)]  # 0.41x: within 5%
    res = load_results(_write(tmp_path, cells))
    line = next(x for x in target_checks(res) if x.startswith("tile+latency on cpu"))
    # 0.41x is within 5% of tile@0.75's 0.40x: compared with that cell as measured
    assert "84.00% at 0.400x (tile@0.75, measured)" in line and "+1.30 pt" in line
    assert line.endswith(": met")
    cells[-1].update(accuracy=0.855, latency={"cpu": {"median_ms": 5.0, "dense_ms": 10.0}})
    line = next(x for x in target_checks(load_results(_write(tmp_path, cells)))
                if x.startswith("tile+latency"))  # fmt: skip
    # 0.5x: uniform tile interpolated between 0.4 (84%) and 0.6 (90%) = 87%
    assert "87.00% at 0.500x (interpolated" in line and "-1.50 pt" in line
    assert line.endswith("NOT met")


def test_faster_matched_cell_is_held_to_the_reference(tmp_path: Path) -> None:
    cells = _grid() + [_cell("tile", 0.75, 0.85, 3.0, matched=True)]  # 0.3x: faster than all
    line = next(x for x in target_checks(load_results(_write(tmp_path, cells)))
                if x.startswith("tile+latency"))  # fmt: skip
    assert "84.00% at 0.400x" in line and "+1.00 pt" in line


def test_unreachable_cell_is_reported_not_failed(tmp_path: Path) -> None:
    cells = _grid() + [{"method": "unstructured", "sparsity": 0.75, "status": "unreachable",
                        "equal_latency": True, "error": "cannot reach"}]  # fmt: skip
    out = write_report(_write(tmp_path, cells))
    text = Path(out["markdown"]).read_text()
    assert "## Accuracy at equal measured latency (cpu)" in text
    assert "| unstructured+latency | - | - | - | - | cannot reach the reference latency" in text
    row = "| unstructured+latency | latency of tile@0.75 | cannot reach the reference latency |"
    assert row in text


def test_no_reference_no_section(tmp_path: Path) -> None:
    path = _write(tmp_path, _grid())
    data = json.loads((path / "summary.json").read_text())
    data["config"].pop("equal_latency")
    (path / "summary.json").write_text(json.dumps(data))
    res = load_results(path)
    assert equal_latency_sections(res) == []
    assert not [x for x in target_checks(res) if "+latency" in x]


def test_accuracy_at_never_extrapolates() -> None:
    assert accuracy_at([], "cpu", 0.5, 0.05).accuracy is None
