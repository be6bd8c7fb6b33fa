"""``prune.permute`` in an experiment: cells reorder channels first, and the report says so."""

from __future__ import annotations

import json
from pathlib import Path

from gpuprune.experiment import parse_config, run_experiment
from gpuprune.experiment.cell import cell_key
from gpuprune.report import write_report


def test_permuted_cells_record_it_and_names_the_rest(tiny_config, tmp_path: Path) -> None:
    tiny_config["prune"].update(methods=["tile", "nm"], permute=True)
    run = tmp_path / "run"
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    assert {c["status"] for c in summary["cells"]} == {"ok"}
    tile = json.loads((run / "cells" / "tile-0.5.json").read_text())
    nm = json.loads((run / "cells" / "nm-0.5.json").read_text())
    perm = tile["permutation"]
    assert set(perm) >= {"links", "swaps", "kept_before", "kept_after", "fixed"}
    for layer, kept in perm["kept_after"].items():
        assert kept >= perm["kept_before"][layer] - 1e-9
    assert "not searched" in nm["permutation"]["not_applied"]
    text = Path(write_report(run)["markdown"]).read_text()
    assert "channels reordered before pruning (prune.permute" in text
    assert "not searched for nm" in text


def test_permute_off_keeps_the_keys_of_earlier_runs(tiny_config) -> None:
    plain = cell_key(parse_config(tiny_config))
    tiny_config["prune"]["permute"] = False
    assert cell_key(parse_config(tiny_config)) == plain
    tiny_config["prune"]["permute"] = True
    assert cell_key(parse_config(tiny_config)) != plain
