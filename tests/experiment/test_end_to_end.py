"""`gpuprune run` then `gpuprune report` on a tiny config, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpuprune.cli.main import main


@pytest.mark.slow
def test_run_and_report_from_the_cli(tiny_config, tmp_path: Path, capsys) -> None:
    tiny_config["latency"]["backends"] = ["reference", "cpu"]
    tiny_config["prune"]["methods"] = ["tile", "simd", "filter"]
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    run = tmp_path / "run"
    assert main(["run", str(config), "-o", str(run), "--no-report"]) == 0
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "dense (baseline)" in out and f"report: {run / 'report.md'}" in out
    for name in ("report.md", "report.html", "accuracy_sparsity.png", "accuracy_latency_cpu.png",
                 "layer_sparsity.png", "speedup_ideal.png"):  # fmt: skip
        assert (run / name).stat().st_size > 0, name
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "src='http" not in html
    md = (run / "report.md").read_text()
    assert "## Cross-target view" in md  # the tile and simd models on every preset
    assert "| tile @ 0.5 | nvidia | 64x32 |" in md and "| simd @ 0.5 | amd-gcn | 32x1 |" in md
