"""Co-design: valid tilings, a seeded sample, the measured-fastest pick, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from gpuprune.arch import Target, get_target
from gpuprune.cli.main import main
from gpuprune.errors import UserError
from gpuprune.geometry import ConvGeometry
from gpuprune.latency import candidates, codesign, tilings, use_layer_targets
from gpuprune.latency.codesign import KERNEL_FIELDS, SPACE, codesign_layer
from gpuprune.latency.geometry import LayerGeometry

GEOMS = {
    "a": LayerGeometry("a", 64, 144, 1, (8, 8), ConvGeometry(16, (3, 3), (1, 1), (1, 1))),
    "b": LayerGeometry("b", 32, 64, 2),
}


def kernel(t: Target) -> tuple[int, ...]:
    return tuple(getattr(t, f) for f in KERNEL_FIELDS)


@pytest.mark.parametrize("name", ["cpu-pocl", "nvidia", "mali"])
def test_tilings_are_valid_and_distinct(name):
    base = get_target(name)
    found = tilings(base)
    assert found and len({kernel(t) for t in found}) == len(found)
    for t in found:
        assert Target.from_dict(t.to_dict()) == t  # validates again
        assert t.simd_width == base.simd_width and t.vendor == base.vendor
        for f, values in SPACE.items():
            assert getattr(t, f) in values


def test_candidates_preset_first_seeded():
    a, b = candidates("cpu-pocl", 5, seed=3), candidates("cpu-pocl", 5, seed=3)
    assert [t.name for t in a] == [t.name for t in b] and len(a) == 6
    assert a[0] == get_target("cpu-pocl")
    assert len({kernel(t) for t in a}) == 6
    assert len(candidates("cpu-pocl", 0)) == 1


def test_picks_the_measured_fastest():
    cands = candidates("cpu-pocl", 6, seed=1)
    fastest = cands[4]
    calls = []

    def fake(geom, tiling, variant, kept):
        calls.append((geom.name, tiling.name, variant, kept))
        if tiling.name == cands[2].name:
            raise UserError("does not fit", "")
        return 1.0 if tiling.name == fastest.name else 2.0 + tiling.mwg / 1000

    result = codesign(GEOMS, "cpu-pocl", count=6, seed=1, sparsity=0.5, measure=fake)
    assert [c.layer for c in result.layers] == ["a", "b"]
    for choice in result.layers:
        assert choice.best.name == fastest.name
        assert choice.speedup == pytest.approx(2.0 + cands[0].mwg / 1000)
        assert cands[2].name in choice.failed and cands[2].name not in choice.tried
    assert result.faster(1.10) == 2
    assert {v for _, _, v, _ in calls} == {"tile"} and {k for *_, k in calls} == {0.5}
    assert result.targets()["a"] == fastest.to_dict()
    assert json.loads(json.dumps(result.to_dict()))["faster_10pct"] == 2


def test_noise_winner_not_confirmed_keeps_preset():
    cands = candidates("cpu-pocl", 2, seed=0)
    seen: dict[str, int] = {}

    def lucky_once(geom, tiling, variant, kept):
        seen[tiling.name] = seen.get(tiling.name, 0) + 1
        if tiling.name == cands[1].name:
            return 0.5 if seen[tiling.name] == 1 else 3.0  # fast only on its first draw
        return 1.0 if tiling is cands[0] else 5.0

    choice = codesign_layer(GEOMS["b"], cands, lucky_once)
    assert choice.best is cands[0] and choice.speedup == 1.0  # the re-timing exposes the fluke
    assert choice.tried[cands[1].name] == 0.5


def test_preset_must_run():
    def broken(geom, tiling, variant, kept):
        raise UserError("no device", "")

    with pytest.raises(UserError, match="preset"):
        codesign(GEOMS, "cpu-pocl", count=1, measure=broken)


def test_cli_on_reference_backend(tmp_path, capsys):
    out = tmp_path / "cd.json"
    args = ["codesign", "--width", "0.125", "--backend", "reference", "--candidates", "1"]
    code = main([*args, "--layers", "features.3", "-o", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["total_layers"] == 1 and data["layers"][0]["layer"] == "features.3"
    assert Target.from_dict(data["layers"][0]["best_target"])
    assert "co-design" in capsys.readouterr().out
    assert main([*args, "--layers", "nope"]) == 2


def test_layer_targets_drive_the_pruner_masks():
    from torch import nn

    from gpuprune.gemm import block_reduce, gemm_view
    from gpuprune.prune import Pruner, get_mask

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 64, 3), nn.Conv2d(64, 64, 3), nn.Flatten(),
        nn.LazyLinear(10),
    )  # fmt: skip
    model(torch.zeros(1, 3, 12, 12))
    pruner = Pruner(model, "tile", target="cpu-pocl", input_size=(3, 12, 12))
    small = next(t for t in tilings("cpu-pocl") if (t.mwg, t.kwg) == (16, 16))
    use_layer_targets(pruner, {"2": small.to_dict()})
    pruner.apply(0.5)
    mask = gemm_view(get_mask(model[2])).float()
    blocks = block_reduce(mask, (16, 16), "sum")
    assert ((blocks == 0) | (blocks == 256)).all()  # whole 16x16 blocks of that layer's tiling
    coarse = block_reduce(mask, (32, 32), "sum")
    assert ((coarse > 0) & (coarse < 1024)).any()  # finer than the preset's 32x32 blocks
    with pytest.raises(UserError, match="not pruned"):
        use_layer_targets(pruner, {"9": small})
