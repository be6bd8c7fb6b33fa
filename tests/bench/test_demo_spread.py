"""benchmarks/demo_spread.py: per-cell mean and spread over runs that differ only in the seed."""

from __future__ import annotations

import pytest

from script_helpers import load_script


def _module():
    return load_script("benchmarks/demo_spread.py", "demo_spread")


def _summary(seed: int, dense: float, tile: float, ratio: float) -> dict:
    cell = {"method": "tile", "sparsity": 0.75, "status": "ok", "accuracy": tile,
            "latency": {"cpu": {"median_ms": ratio * 10, "dense_ms": 10.0}}}  # fmt: skip
    far = {"method": "filter", "sparsity": 0.75, "equal_latency": True, "status": "unreachable"}
    return {"config": {"seed": seed, "equal_latency": {"reference": "tile@0.75"}},
            "dense": {"accuracy": dense}, "cells": [cell, far], "seconds": 1.0}  # fmt: skip


def test_mean_spread_and_table() -> None:
    mod = _module()
    res = mod.spread([_summary(0, 0.91, 0.85, 0.70), _summary(1, 0.90, 0.86, 0.72),
                      _summary(2, 0.92, 0.84, 0.71)])  # fmt: skip
    dense, tile, far = res["rows"]
    assert dense["accuracy_mean"] == pytest.approx(0.91)
    assert dense["accuracy_spread"] == pytest.approx(0.02)
    assert tile["latency_mean"] == pytest.approx(0.71) and tile["accuracy"] == [0.85, 0.86, 0.84]
    assert far["status"] == "unreachable" and "accuracy_mean" not in far
    table = mod.markdown(res)
    assert "| tile | 0.75 | 85.00% ± 1.00 pt | 85.00% / 86.00% / 84.00% | 0.710 ± 0.010 |" in table
    assert "| filter+latency | latency of tile@0.75 | cannot reach it |" in table


def test_runs_of_different_configs_are_refused() -> None:
    other = _summary(1, 0.9, 0.8, 0.7)
    other["config"]["equal_latency"] = {"reference": "tile@0.5"}
    with pytest.raises(SystemExit, match="differ in more than the seed"):
        _module().spread([_summary(0, 0.9, 0.8, 0.7), other])
