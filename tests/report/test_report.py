"""Report: derived numbers, Pareto front, files written, HTML self-contained, failed cells shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuprune.errors import UserError
from gpuprune.report import load_results, pareto_front, summary_table, target_checks, write_report
from gpuprune.report.verdict import verdict

PNG = b"\x89PNG\r\n\x1a\n"


def _layer(name: str, dense: int, kept: int, sparsity: float) -> dict:
    return {"name": name, "shape": [8, 9], "block": [4, 1], "sparsity": sparsity,
            "blocks_kept": 3, "blocks_total": 8, "flops_dense": dense, "flops_kept": kept,
            "skippable": {"cpu": sparsity}}  # fmt: skip


def _cell(method: str, sparsity: float, acc: float, ms: float, dense_ms: float = 12.0) -> dict:
    kept = int(600 * (1 - sparsity))
    variant = "simd" if method in ("simd", "simd-balanced") else "tile"  # as the cell records it
    return {"method": method, "sparsity": sparsity, "status": "ok", "accuracy": acc,
            "variant": variant,
            "achieved_sparsity": sparsity, "flops_kept": 1 - sparsity,
            "layers": [_layer("conv2", 600, kept, sparsity)],
            "latency": {"cpu": {"median_ms": ms, "dense_ms": dense_ms}},
            "seconds": 1.0}  # fmt: skip


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    cells = [_cell("tile", 0.5, 0.90, 6.0), _cell("tile", 0.75, 0.88, 4.0),
             _cell("unstructured", 0.75, 0.885, 9.0), _cell("filter", 0.75, 0.80, 3.0),
             {"method": "nm", "sparsity": 0.75, "status": "failed",
              "error": "loss became nan at epoch 1 step 3"}]  # fmt: skip
    summary = {
        "name": "fake", "cuts": ["cut A"],
        "config": {"latency": {"backends": ["cpu"]},
                   "targets": {"dense_accuracy": 0.91, "sparsity": 0.75, "max_gap_pt": 1.0}},
        "notes": ["note B"], "cells": cells,
        "dense": {"accuracy": 0.92, "flops": {"conv1": 200, "conv2": 600, "fc": 200},
                  "latency": {"torch": {"median_ms": 7.0}, "cpu": {"tile": {"median_ms": 8.0},
                                                                   "simd": {"median_ms": 10.0}}}},
    }  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_derived_numbers(run_dir: Path) -> None:
    res = load_results(run_dir)
    tile = next(r for r in res.rows if r.method == "tile" and r.sparsity == 0.75)
    assert tile.drop_pt == pytest.approx(4.0)
    assert tile.flops_kept == pytest.approx((200 + 150 + 200) / 1000)  # whole model, not layer
    assert tile.ideal_speedup == pytest.approx(1000 / 550)
    assert tile.speedup["cpu"] == pytest.approx(12.0 / 4.0)  # paired dense timing / this


def test_table_names_baseline_drop_and_failures(run_dir: Path) -> None:
    cols, rows = summary_table(load_results(run_dir))
    assert rows[0][0] == "dense (baseline)" and rows[0][4] == "92.00%"
    assert "drop (pt)" in cols and "cpu speedup" in cols
    tile = next(r for r in rows if r[:2] == ["tile", "0.75"])
    assert tile[cols.index("drop (pt)")] == "+4.00"
    assert any(r[0] == "nm" and r[2].startswith("failed: loss became nan") for r in rows)


def test_target_checks_state_measured_numbers(run_dir: Path) -> None:
    lines = target_checks(load_results(run_dir))
    assert lines[0] == "dense accuracy 92.00% (target >= 91%): met"
    assert any("tile at 0.75" in x and "+0.50 pt below unstructured" in x and ": met" in x
               for x in lines)  # fmt: skip
    assert any("vs filter" in x and ": above" in x for x in lines)


def test_target_checks_say_within_noise(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config"]["targets"]["noise_pt"] = 0.8  # dense passes by 1.0, tile by 0.5
    summary["environment"] = {"machine": "x86_64", "cpu": "Some CPU", "cpu_isa": "AVX2",
                              "cpus": 2, "torch": "2.x"}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lines = target_checks(load_results(run_dir))
    assert lines[0] == "dense accuracy 92.00% (target >= 91%): met"  # margin 1.0 > spread 0.8
    tile = next(x for x in lines if "tile at 0.75" in x and "unstructured" in x)
    assert tile.endswith(": met, within noise (margin +0.50 pt, spread 0.80 pt)")
    md = write_report(run_dir)["markdown"].read_text()
    assert "machine: Some CPU (AVX2), x86_64, 2 CPUs" in md
    summary["config"]["targets"]["noise_pt"] = {"dense": 1.5, "default": 0.4}  # per subject
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lines = target_checks(load_results(run_dir))
    assert lines[0].endswith("met, within noise (margin +1.00 pt, spread 1.50 pt)")
    assert next(x for x in lines if "tile at 0.75" in x and "unstructured" in x).endswith(": met")


@pytest.mark.parametrize(("margin", "noise", "word"), [
    (0.3, None, "met"), (-0.3, None, "NOT met"), (0.3, 0.5, "met, within noise"),
    (-0.3, 0.5, "NOT met, within noise"), (-0.6, 0.5, "NOT met"), (0.0, 0.0, "met"),
])  # fmt: skip
def test_verdict(margin: float, noise: float | None, word: str) -> None:
    got = verdict(margin, noise)
    assert got == word or got.startswith(word + " (margin")


def test_pareto_front() -> None:
    pts = [(5.0, 90.0), (3.0, 85.0), (4.0, 84.0), (8.0, 92.0), (6.0, 89.0), (3.0, 80.0)]
    assert pareto_front(pts) == [(3.0, 85.0), (5.0, 90.0), (8.0, 92.0)]


def test_write_report_files(run_dir: Path) -> None:
    out = write_report(run_dir)
    md = out["markdown"].read_text()
    assert "| dense (baseline) |" in md and "cut A" in md and "note B" in md
    assert "![Accuracy vs latency (cpu)](accuracy_latency_cpu.png)" in md
    for p in out["plots"]:
        assert p.read_bytes().startswith(PNG)
    html = out["html"].read_text()
    assert html.count("data:image/png;base64,") == len(out["plots"]) == 4
    assert "<img" in html and "src='http" not in html and 'src="http' not in html


def test_empty_folder_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="gpuprune run"):
        load_results(tmp_path)


def test_oneshot_plot_and_table(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["oneshot"] = {"calibration_images": 256, "rows": [
        {"method": m, "sparsity": s, "importance": i, "status": "ok", "accuracy": a,
         "accuracy_bn": a + 0.05}
        for m, s, i, a in [("tile", 0.5, "magnitude", 0.10), ("tile", 0.5, "obs", 0.80),
                           ("tile", 0.75, "magnitude", 0.10), ("tile", 0.75, "obs", 0.30)]]}
    (run_dir / "summary.json").write_text(json.dumps(summary))  # fmt: skip
    out = write_report(run_dir)
    md = out["markdown"].read_text()
    assert "![One-shot accuracy, no fine-tuning](oneshot.png)" in md
    assert (run_dir / "oneshot.png").read_bytes().startswith(PNG)
    assert "| tile@0.5 | 10.00% | 80.00% | 15.00% | 85.00% | 85% |" in md  # (0.8-0.1)/(0.92-0.1)
    assert "obs recovers 85%" in md and "met" in md


def test_gap_targets_per_method(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config"]["targets"]["max_gap_pt"] = {"tile": 2.0, "simd": 1.0}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    line = next(c for c in target_checks(load_results(run_dir)) if c.startswith("tile at 0.75"))
    assert "+0.50 pt below unstructured (target <= 2)" in line and line.endswith("met")
