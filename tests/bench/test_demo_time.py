"""benchmarks/demo_time.py: a run's per-phase time from its summary, rows adding up to the total."""

from __future__ import annotations

import pytest

from script_helpers import load_script


def _module():
    return load_script("benchmarks/demo_time.py", "demo_time")


def test_phases_add_up_and_split_evaluations_from_steps():
    cell = {"seconds": 12.0, "finetune": {"seconds": 10.0,
                                          "history": [{"seconds": 4.0}, {"seconds": 4.5}]}}
    matched = {"seconds": 15.0, "equal_latency": True, "finetune": {"seconds": 9.0, "history": []}}
    summary = {"seconds": 100.0, "dense": {"seconds": 50.0}, "codesign": {"seconds": 3.0},
               "cells": [cell, matched]}  # fmt: skip
    rows = dict(_module().breakdown(summary))
    assert rows["dense training"] == 50.0
    assert rows["cells: fine-tuning steps"] == pytest.approx(17.5)  # 8.5 + 9 (no epoch times)
    assert rows["cells: test-set evaluations"] == pytest.approx(1.5)
    assert rows["cells: latency-matched planning + timing"] == pytest.approx(6.0)
    assert rows["cells: compile, timing, saving (grid cells)"] == pytest.approx(2.0)
    assert rows["total"] == 100.0
    assert sum(v for k, v in rows.items() if k != "total") == pytest.approx(100.0)
