"""LatencyModel and its cache: measured points, disk round trip, invalidation by key."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpuprune.arch import get_target
from gpuprune.errors import UserError
from gpuprune.gemm import from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import get_backend
from gpuprune.latency import LatencyCache, LatencyCurve, LatencyModel, analytical_ms, geometry_of
from gpuprune.latency.cache import cache_dir, make_key
from gpuprune.latency.geometry import LayerGeometry, model_geometries
from gpuprune.latency.measure import build_layer, probe_weight

CONV = LayerGeometry("c", 40, 9 * 8, 2, (6, 5), ConvGeometry(8, (3, 3), (1, 1), (1, 1)))


class CountingTimer:
    """Runs the call once (so the layer really executes) and returns a fake latency."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn):
        fn()
        self.calls += 1
        return float(self.calls)


def test_cache_round_trip_and_invalidation(tmp_path):
    cache = LatencyCache(tmp_path)
    t = get_target("cpu-pocl")
    key = make_key("dev", "opencl", t, "tile", CONV.key(), (0.5, 1.0))
    curve = LatencyCurve.from_points({0.5: 1.5, 1.0: 2.5})
    assert cache.get(key) is None
    cache.put(key, curve)
    got = cache.get(key)
    assert got.kept == curve.kept and got.ms == curve.ms and got.source == "cached"
    other_tiling = t.replace(kwg=16)
    for changed in (
        make_key("dev2", "opencl", t, "tile", CONV.key(), (0.5, 1.0)),
        make_key("dev", "cpu", t, "tile", CONV.key(), (0.5, 1.0)),
        make_key("dev", "opencl", other_tiling, "tile", CONV.key(), (0.5, 1.0)),
        make_key("dev", "opencl", t, "simd", CONV.key(), (0.5, 1.0)),
        make_key("dev", "opencl", t, "tile", CONV.with_batch(3).key(), (0.5, 1.0)),
        make_key("dev", "opencl", t, "tile", CONV.key(), (0.25, 1.0)),
        {**key, "kernels": "other kernel code"},  # the kernels' sources changed
    ):
        assert cache.get(changed) is None
    # a renamed target with the same tiling is the same kernel: a hit
    renamed = make_key("dev", "opencl", t.replace(name="mine"), "tile", CONV.key(), (0.5, 1.0))
    assert cache.get(renamed) is not None
    cache.path(key).write_text("{not json")
    assert cache.get(key) is None


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUPRUNE_LATENCY_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("GPUPRUNE_LATENCY_CACHE")
    assert cache_dir().parts[-3:] == (".cache", "gpuprune", "latency")


def test_measured_model_uses_cache(tmp_path):
    timer = CountingTimer()
    cache = LatencyCache(tmp_path)
    lm = LatencyModel("reference", "cpu-pocl", probes=(0.25, 1.0), cache=cache, timer=timer)
    assert lm.measured
    curve = lm.curve(CONV)
    assert timer.calls == 2 and curve.kept == (0.25, 1.0) and curve.source == "measured"
    again = LatencyModel("reference", "cpu-pocl", probes=(0.25, 1.0), cache=cache, timer=timer)
    assert again.curve(CONV).ms == curve.ms and timer.calls == 2  # from disk, not re-measured
    assert again.curve(CONV).source == "cached"
    lm.curve(CONV.with_batch(1))
    assert timer.calls == 4  # another shape: measured


def test_analytical_model_and_fallback():
    lm = LatencyModel("analytical", "cpu-pocl")
    assert not lm.measured
    curve = lm.curve(CONV)
    assert curve.source == "analytical"
    assert curve(1.0) > curve(0.25) > 0
    with pytest.raises(UserError):
        LatencyModel("no-such-backend", "cpu-pocl")


def test_analytical_monotone_and_occupancy():
    t = get_target("nvidia")
    big = LayerGeometry("b", 512, 512, 4096)
    values = [analytical_ms(big, t, "tile", k) for k in (0.1, 0.3, 0.6, 1.0)]
    assert values == sorted(values)
    assert analytical_ms(big, t, "simd", 0.5) >= analytical_ms(big, t, "tile", 0.5) - 1e-12
    assert analytical_ms(big, t, "dense", 0.2) == analytical_ms(big, t, "tile", 1.0)
    with pytest.raises(UserError):
        analytical_ms(big, t, "tile", 1.5)


def test_probe_weight_keeps_exact_block_counts():
    w = probe_weight(CONV, (8, 8), 0.5)
    blocks = (w.reshape(5, 8, 9, 8).abs().sum(dim=(1, 3)) != 0).sum(dim=1)
    assert blocks.tolist() == [4] * 5  # round(0.5 * 9) = 4 per row-block (ragged K included)


def test_geometry_matches_the_layer():
    conv = nn.Conv2d(3, 7, 3, stride=2, padding=1)
    geom = geometry_of("conv", conv, (9, 11), batch=2)
    y = conv(torch.randn(2, 3, 9, 11))
    assert geom.n == y.shape[0] * y.shape[2] * y.shape[3] and geom.k == 27
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 64, 5))
    geoms = model_geometries(model, batch=3, input_size=(3, 8, 8))
    assert geoms["0"].in_hw == (8, 8) and geoms["2"].kind == "linear" and geoms["2"].n == 3
    with pytest.raises(UserError):
        geometry_of("c", conv)  # conv without an input size
    with pytest.raises(UserError):
        geometry_of("r", nn.ReLU())


def test_build_layer_runs_the_masked_layer():
    t = get_target("cpu-pocl")
    w = probe_weight(CONV, t.tile_block(), 0.5)
    fn = build_layer(get_backend("reference"), CONV, t, "tile", w)
    y = fn()
    assert y.shape == (2, 40, 6, 5)
    x = torch.randn(2, 8, 6, 5, generator=torch.Generator().manual_seed(1))  # build_layer's input
    want = F.conv2d(x, from_gemm(w, (40, 8, 3, 3)), padding=1)
    assert (y - want).abs().max() < 1e-4
