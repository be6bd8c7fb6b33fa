"""The distillation study: grid cells fine-tuned again with the other distillation setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuprune.errors import UserError
from gpuprune.experiment import parse_config, run_experiment
from gpuprune.report import write_report


def test_study_rows_report_and_rerun(tiny_config, tmp_path: Path) -> None:
    tiny_config["distill_study"] = {"methods": ["tile", "unstructured"], "sparsity": 0.5,
                                    "alpha": 0.7, "temperature": 2.0}  # fmt: skip
    run = tmp_path / "run"
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    study = summary["distill_study"]
    assert study["default"] == "without" and study["alpha"] == 0.7
    cells = {c["method"]: c for c in summary["cells"]}
    for row in study["rows"]:
        assert row["without"] == cells[row["method"]]["accuracy"]  # the grid cell itself
        assert 0 <= row["with"] <= 1 and row["error"] is None
    stored = json.loads((run / "distill" / "tile-0.5.json").read_text())
    assert stored["distill"] == {"alpha": 0.7, "temperature": 2.0}
    assert stored["status"] == "trained" and (run / "distill" / "tile-0.5" /
                                              "model.safetensors").is_file()  # fmt: skip
    assert not (run / "cells" / "distill").exists()  # study cells are not grid cells
    text = Path(write_report(run)["markdown"]).read_text()
    assert "## Fine-tuning with and without distillation" in text
    assert "alpha 0.7, temperature 2.0" in text and "| tile@0.5 |" in text

    before = (run / "distill" / "tile-0.5.json").stat().st_mtime_ns
    again = run_experiment(parse_config(tiny_config), run, progress=False)
    assert (run / "distill" / "tile-0.5.json").stat().st_mtime_ns == before  # read back
    assert again["distill_study"]["rows"] == [{**r, "seconds": r["seconds"]}
                                              for r in study["rows"]]  # fmt: skip


def test_a_distilling_run_studies_plain_fine_tuning(tiny_config, tmp_path: Path) -> None:
    tiny_config["prune"]["methods"] = ["tile"]
    tiny_config["finetune"]["distill"] = {"alpha": 0.5, "temperature": 3.0}
    tiny_config["distill_study"] = {"methods": ["tile"], "sparsity": 0.5}
    summary = run_experiment(parse_config(tiny_config), tmp_path / "run", progress=False)
    study = summary["distill_study"]
    assert study["default"] == "with" and study["temperature"] == 3.0  # the run's own setting
    row = study["rows"][0]
    assert row["with"] == summary["cells"][0]["accuracy"]
    stored = json.loads((tmp_path / "run" / "distill" / "tile-0.5.json").read_text())
    assert stored["distill"] is None and row["without"] == stored["accuracy"]


def test_study_cells_must_be_grid_cells(tiny_config) -> None:
    tiny_config["distill_study"] = {"methods": ["simd"]}
    with pytest.raises(UserError, match=r"distill_study: \['simd'\] not in prune.methods"):
        parse_config(tiny_config)
    tiny_config["distill_study"] = {"methods": ["tile"], "sparsity": 0.75}
    with pytest.raises(UserError, match="distill_study: sparsity 0.75 is not a grid sparsity of"):
        parse_config(tiny_config)
    tiny_config["distill_study"] = {"methods": ["tile", "tile"], "sparsity": 0.5}
    with pytest.raises(UserError, match="must not repeat"):
        parse_config(tiny_config)
