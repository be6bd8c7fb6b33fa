"""Cells pruned to the reference cell's latency: planned, stored, reused, unreachable ones kept
apart from failures, and the batch-stat loss estimate leaves the model untouched."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from gpuprune.errors import UserError
from gpuprune.experiment import parse_config, run_experiment
from gpuprune.experiment.equal_latency import batch_stat_evaluator, check_equal_latency


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUPRUNE_LATENCY_CACHE", str(tmp_path / "latency-cache"))


def _with_equal_latency(cfg: dict, methods: list[str]) -> dict:
    cfg["prune"]["sparsities"] = [0.5, 0.75]
    cfg["equal_latency"] = {"reference": "tile@0.75", "methods": methods,
                            "backend": "analytical", "sensitivity_batches": 2}  # fmt: skip
    return cfg


def test_matched_cells_planned_stored_and_reused(tiny_config, tmp_path: Path) -> None:
    cfg = _with_equal_latency(tiny_config, ["tile", "unstructured"])
    run = tmp_path / "run"
    summary = run_experiment(parse_config(cfg), run, progress=False)  # unreachable: no raise
    cells = run / "cells"
    tile = json.loads((cells / "tile-latency.json").read_text())
    assert tile["status"] == "ok" and tile["equal_latency"] and tile["allocation"] == "latency"
    m = tile["matched"]
    assert m["modelled_ms"] == pytest.approx(m["reference_ms"], rel=1e-3)  # same modelled time
    assert m["modelled_ms"] < m["dense_ms"]
    assert m["loss_estimate"] == "training-batch loss, batch statistics"
    achieved = {lay["name"]: lay["sparsity"] for lay in tile["layers"]}
    for name, planned in m["plan"].items():  # the schedule ends on the plan
        assert achieved[name] == pytest.approx(planned, abs=0.05)
    un = json.loads((cells / "unstructured-latency.json").read_text())
    assert un["status"] == "unreachable" and "cannot reach the latency of tile@0.75" in un["error"]
    assert len(summary["cells"]) == 6

    before = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    run_experiment(parse_config(cfg), run, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")} == before

    cfg["equal_latency"]["sensitivity_batches"] = 1  # only the matched cells depend on it
    run_experiment(parse_config(cfg), run, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"tile-latency.json", "unstructured-latency.json"}


def test_reference_must_be_a_cell(tiny_config) -> None:
    cfg = _with_equal_latency(tiny_config, ["tile"])
    cfg["equal_latency"]["reference"] = "simd@0.75"
    with pytest.raises(UserError, match="simd@0.75 is not a cell of this config"):
        check_equal_latency(parse_config(cfg))
    cfg["equal_latency"]["reference"] = "tile"
    with pytest.raises(UserError, match="equal_latency.reference: must name a cell"):
        parse_config(cfg)
    cfg["equal_latency"]["reference"] = None
    with pytest.raises(UserError, match="needs equal_latency.reference"):
        check_equal_latency(parse_config(cfg))


def test_batch_stat_loss_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).eval()  # fmt: skip
    model[1].running_mean.fill_(5.0)  # stale statistics: eval mode would be far off
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(2)]
    evaluate = batch_stat_evaluator(model, {"0": model[0]}, batches)
    base = evaluate(None, None)
    pruned = evaluate("0", torch.zeros(4, 9, dtype=torch.bool))
    assert pruned != pytest.approx(base)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training
    twin = copy.deepcopy(model)
    twin[1].train()  # batch statistics, not the stale running ones
    with torch.no_grad():
        expected = sum(float(nn.functional.cross_entropy(twin(x), y)) for x, y in batches) / 2
    assert base == pytest.approx(expected, rel=1e-6)
