"""A conv whose max pool compile() fuses is measured with the pool, as it runs compiled."""

from __future__ import annotations

import torch
from torch import nn

from gpuprune.arch import get_target
from gpuprune.latency.geometry import model_geometries
from gpuprune.latency.measure import build_layer


def _net(ceil: bool) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2, 2, ceil_mode=ceil),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),  # 3x3: not fused
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
    ).eval()  # fmt: skip


def test_fused_pool_is_part_of_the_geometry_and_the_measured_layer() -> None:
    for ceil in (False, True):
        geoms = model_geometries(_net(ceil), batch=2, input_size=(3, 11, 11))
        assert geoms["0"].pool == ("ceil" if ceil else "floor")
        assert geoms["4"].pool is None and geoms["8"].pool is None
        unpooled = geoms["0"].__class__(**{**geoms["0"].__dict__, "pool": None})
        assert geoms["0"].key() != unpooled.key()  # a separate cached curve

    from gpuprune.kernels.backends import get_backend

    cpu = get_backend("cpu")
    geom = model_geometries(_net(True), batch=2, input_size=(3, 11, 11))["0"]
    weight = torch.randn(geom.m, geom.k)
    out = build_layer(cpu, geom, get_target("cpu-pocl"), "tile", weight)()
    assert out.shape == (2, 8, 6, 6)  # 11x11 conv output pooled 2x2 in ceil mode
