"""The report's co-design table and target check; runs without co-design still render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpuprune.arch import get_target
from gpuprune.geometry import ConvGeometry
from gpuprune.latency import codesign
from gpuprune.latency.geometry import LayerGeometry
from gpuprune.report import load_results, target_checks, write_report
from gpuprune.report.codesign import codesign_checks, codesign_section

PRESET = get_target("cpu-pocl").name
GEOMS = {
    "conv2": LayerGeometry("conv2", 64, 144, 1, (8, 8), ConvGeometry(16, (3, 3), (1, 1), (1, 1))),
    "conv3": LayerGeometry("conv3", 32, 288, 1, (4, 4), ConvGeometry(32, (3, 3), (1, 1), (1, 1))),
    "fc": LayerGeometry("fc", 10, 64, 1),
}


def _codesign_record() -> dict[str, Any]:
    """What the experiment stores: conv2 1.5x faster, conv3 1.05x (below 10%), fc keeps preset."""

    def fake(geom: LayerGeometry, tiling: Any, variant: str, kept: float) -> float:
        if tiling.name == PRESET:
            return 3.0
        return {"conv2": 2.0, "conv3": 3.0 / 1.05}.get(geom.name, 4.0)

    result = codesign(GEOMS, PRESET, count=2, seed=0, sparsity=0.75, measure=fake)
    return {"key": "k", "backend": "opencl", "device": "pthread-test", "batch": 1,
            "candidates": 2, "seed": 0, **result.to_dict(), "seconds": 1.0}  # fmt: skip


def _write_run(folder: Path, codesign: Any = "absent", share: float | None = None,
               sparsity: float | None = 0.75) -> Path:  # fmt: skip
    targets: dict[str, Any] = {"dense_accuracy": 0.5, "sparsity": sparsity}
    if share is not None:
        targets["codesign_share"] = share
    summary = {
        "name": "fake", "cuts": [], "notes": [], "cells": [],
        "config": {"latency": {"backends": ["cpu"]}, "targets": targets},
        "dense": {"accuracy": 0.92, "flops": {"conv2": 600},
                  "latency": {"torch": {"median_ms": 7.0}, "cpu": {"tile": {"median_ms": 8.0}}}},
    }  # fmt: skip
    if codesign != "absent":
        summary["codesign"] = codesign
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_table_per_layer(tmp_path: Path) -> None:
    sec = codesign_section(load_results(_write_run(tmp_path, _codesign_record())))
    assert sec is not None and sec.columns[1] == "GEMM M x K x N"
    by_layer = {row[0]: row for row in sec.rows}
    assert list(by_layer) == ["conv2", "conv3", "fc"]
    conv2 = by_layer["conv2"]
    assert conv2[1] == "64 x 144 x 64" and conv2[2] == "3.000" and conv2[4] == "2.000"
    assert conv2[3] != "preset" and "@" not in conv2[3] and conv2[5] == "1.50x"
    assert by_layer["conv3"][5] == "1.05x"
    assert by_layer["fc"][3] == "preset" and by_layer["fc"][5] == "1.00x"
    for words in ("opencl (pthread-test)", "batch 1", "tile kernel", "0.75", "preset plus 2",
                  "alternately", "not these tilings"):  # fmt: skip
        assert words in sec.note


@pytest.mark.parametrize(("share", "verdict"), [(0.333, ": met"), (0.5, ": NOT met")])
def test_check_states_the_share_and_verdict(tmp_path: Path, share: float, verdict: str) -> None:
    res = load_results(_write_run(tmp_path, _codesign_record(), share))
    expected = (f"co-design on opencl: 1 of 3 layers have a tiling >= 10% faster than the "
                f"{PRESET} preset (target >= {share * 100:.3g}%){verdict}")  # fmt: skip
    assert codesign_checks(res) == [expected]
    assert target_checks(res)[-1] == expected  # appended to the report's Targets list


def test_check_listed_without_a_sparsity_target(tmp_path: Path) -> None:
    res = load_results(_write_run(tmp_path, _codesign_record(), share=0.3, sparsity=None))
    assert target_checks(res)[-1].startswith("co-design on opencl")


def test_check_without_a_target_has_no_verdict(tmp_path: Path) -> None:
    (line,) = codesign_checks(load_results(_write_run(tmp_path, _codesign_record())))
    assert line.endswith(f"than the {PRESET} preset") and "met" not in line


def test_no_layers_is_not_met(tmp_path: Path) -> None:
    rec = {**_codesign_record(), "layers": [], "total_layers": 0, "faster_10pct": 0}
    res = load_results(_write_run(tmp_path, rec, share=0.2))
    assert codesign_checks(res)[0].endswith("NOT met (no layers timed)")
    assert codesign_section(res).rows == []


@pytest.mark.parametrize("codesign_value", ["absent", None])
def test_runs_without_codesign_render(tmp_path: Path, codesign_value: Any) -> None:
    res = load_results(_write_run(tmp_path, codesign_value))
    assert codesign_section(res) is None and codesign_checks(res) == []
    md = write_report(tmp_path)["markdown"].read_text()
    assert "co-design" not in md.lower()


def test_a_codesign_target_without_codesign_says_not_measured(tmp_path: Path) -> None:
    """co-design left out (off, or its backend cannot run here): the target is named as not
    measured, not dropped."""
    res = load_results(_write_run(tmp_path, None, share=0.3))
    assert codesign_section(res) is None
    (line,) = codesign_checks(res)
    assert "not measured" in line and "30%" in line


def test_report_files_show_the_table(tmp_path: Path) -> None:
    out = write_report(_write_run(tmp_path, _codesign_record(), share=0.3))
    md, page = out["markdown"].read_text(), out["html"].read_text()
    assert "## Tile co-design" in md and "| conv2 | 64 x 144 x 64 | 3.000 |" in md
    assert "1 of 3 layers" in md and "(target >= 30%): met" in md
    assert "<h2>Tile co-design</h2>" in page and "<td>1.50x</td>" in page
