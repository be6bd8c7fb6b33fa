"""cross_target: skippable fraction and modelled speedup of one pruned model on every preset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpuprune.arch import list_targets
from gpuprune.latency import cross_target


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


def test_dense_model_has_nothing_to_skip():
    rows = cross_target(tiny(), input_size=(3, 8, 8))
    assert len(rows) == 2 * len(list_targets())
    assert {(r["target"], r["variant"]) for r in rows} == {
        (t, v) for t in list_targets() for v in ("tile", "simd")
    }
    for r in rows:
        assert r["skippable"] == 0.0 and r["modelled_speedup"] == pytest.approx(1.0)


def test_pruned_model_skips_and_speeds_up():
    model = tiny()
    with torch.no_grad():
        model[2].weight[:, : 64 // 2] = 0  # half of the input channels of the big conv: K blocks
    rows = {(r["target"], r["variant"]): r for r in cross_target(model, input_size=(3, 8, 8))}
    for (_, _variant), r in rows.items():
        assert 0.0 < r["skippable"] < 1.0
        assert r["modelled_speedup"] > 1.0
        assert r["modelled_ms"] < r["dense_ms"]
    # only part of the whole model is pruned: no target may claim more than that share
    big = 128 * 576
    share = (big / 2) / (big + 64 * 27 + 10 * 128)
    assert all(r["skippable"] <= share + 0.1 for r in rows.values())


def test_subset_of_targets():
    rows = cross_target(tiny(), targets=["nvidia"], input_size=(3, 8, 8))
    assert [r["target"] for r in rows] == ["nvidia", "nvidia"]
