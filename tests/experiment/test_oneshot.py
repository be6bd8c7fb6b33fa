"""The one-shot study (magnitude vs OBS, batch-norm recalibration), OBS cells and distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuprune.errors import UserError
from gpuprune.experiment import parse_config, run_experiment
from gpuprune.fileio import write_record
from gpuprune.report import write_report


def test_oneshot_table_obs_cells_and_distillation(tiny_config, tmp_path: Path) -> None:
    tiny_config["prune"].update(methods=["tile"], importance="obs", calibration=32)
    tiny_config["finetune"]["distill"] = {"alpha": 0.5, "temperature": 2.0}
    tiny_config["oneshot"] = {"methods": ["tile", "unstructured"], "sparsities": [0.5],
                              "importances": ["magnitude", "obs"], "bn_batches": 1}  # fmt: skip
    run = tmp_path / "run"
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    cell = summary["cells"][0]
    assert cell["status"] == "ok", cell.get("error")
    assert cell["achieved_sparsity"] == pytest.approx(0.5, abs=0.1)
    rows = summary["oneshot"]["rows"]
    assert [(r["method"], r["importance"], r["status"]) for r in rows] == [
        ("tile", "magnitude", "ok"), ("tile", "obs", "ok"),
        ("unstructured", "magnitude", "ok"), ("unstructured", "obs", "ok")]  # fmt: skip
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["accuracy_bn"] <= 1 for r in rows)
    assert summary["oneshot"]["calibration_images"] == 32
    stored = json.loads((run / "oneshot.json").read_text())
    assert stored["rows"] == rows
    report = write_report(run)
    text = Path(report["markdown"]).read_text()
    assert "One-shot pruning (no fine-tuning)" in text and "tile@0.5" in text
    assert "distilled from the dense model (alpha 0.5" in text

    before = (run / "oneshot.json").stat().st_mtime_ns
    run_experiment(parse_config(tiny_config), run, progress=False)
    assert (run / "oneshot.json").stat().st_mtime_ns == before  # same settings: read back

    stored.update(rows=rows[:2], complete=False)  # as if interrupted after two rows
    write_record(run / "oneshot.json", stored)  # as the study stores it: checksummed
    again = run_experiment(parse_config(tiny_config), run, progress=False)["oneshot"]
    assert again["complete"] and again["rows"][:2] == rows[:2]  # kept, not recomputed
    assert [r["status"] for r in again["rows"]] == ["ok"] * 4


def test_distill_is_for_finetuning_only(tiny_config) -> None:
    tiny_config["dense"]["distill"] = {"alpha": 0.5}
    with pytest.raises(UserError, match="dense: distill applies to finetune only"):
        parse_config(tiny_config)
    del tiny_config["dense"]["distill"]
    tiny_config["oneshot"] = {"methods": ["tile"], "importances": ["obs", "obs"]}
    with pytest.raises(UserError, match="oneshot.importances: must not repeat"):
        parse_config(tiny_config)


def test_oneshot_on_a_test_subset_reads_dense_on_it_too(tiny_config, tmp_path: Path) -> None:
    tiny_config["prune"].update(methods=["tile"], calibration=32)
    tiny_config["oneshot"] = {"methods": ["tile"], "sparsities": [0.5],
                              "importances": ["magnitude"], "test_images": 20}  # fmt: skip
    rec = run_experiment(parse_config(tiny_config), tmp_path / "run", progress=False)["oneshot"]
    assert rec["test_images"] == 20
    for acc in [rec["dense_accuracy"], *(r["accuracy"] for r in rec["rows"])]:
        assert abs(acc * 20 - round(acc * 20)) < 1e-9  # read on 20 images
