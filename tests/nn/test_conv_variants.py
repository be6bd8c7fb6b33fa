"""Conv variants end to end: string/uneven/non-zero-mode padding, Conv1d, grouped and depthwise
convolutions are pruned (per group), compiled, and equal the masked model; whatever stays dense
is named with its reason."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpuprune.prune as gp
from gpuprune.arch import get_target
from gpuprune.geometry import ConvGeometry
from gpuprune.nn import SkipConv2d, SkipGroupedConv2d, compile
from gpuprune.plan import PrunePlan

POCL = get_target("cpu-pocl")  # tile block 32x32, SIMD block 4x1
BACKENDS = ["reference", "cpu"]

CASES = {  # name: (layer, input shape)
    "same-odd": (nn.Conv2d(16, 64, 3, padding="same"), (2, 16, 9, 7)),
    "same-even-dilated": (nn.Conv2d(16, 64, 4, padding="same", dilation=2), (2, 16, 9, 8)),
    "valid": (nn.Conv2d(16, 64, 3, padding="valid", stride=2), (2, 16, 9, 9)),
    "reflect": (nn.Conv2d(16, 64, 3, padding=1, padding_mode="reflect"), (2, 16, 8, 8)),
    "replicate": (nn.Conv2d(16, 64, 3, padding=(2, 1), padding_mode="replicate"), (1, 16, 6, 7)),
    "circular": (nn.Conv2d(16, 64, (3, 5), padding=(1, 2), padding_mode="circular"), (2, 16, 8, 8)),
    "grouped": (nn.Conv2d(64, 64, 3, padding=1, groups=2), (2, 64, 6, 6)),
    "grouped-same-reflect": (
        nn.Conv2d(64, 64, 3, padding="same", groups=2, padding_mode="reflect"), (1, 64, 5, 6)
    ),
    "conv1d": (nn.Conv1d(16, 64, 5, padding=2, stride=2), (2, 16, 21)),
    "conv1d-same-reflect": (
        nn.Conv1d(16, 64, 4, padding="same", padding_mode="reflect"), (2, 16, 13)
    ),
    "conv1d-grouped": (nn.Conv1d(64, 64, 3, padding=1, groups=2), (2, 64, 11)),
}


def _available(backend: str) -> None:
    from gpuprune.errors import UserError
    from gpuprune.kernels import get_backend

    try:
        get_backend(backend).check_available()
    except UserError as err:
        pytest.skip(f"{backend} backend unavailable: {err.problem}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_conv_variant_prunes_compiles_and_matches(case, backend):
    _check_case(case, backend)


@pytest.mark.parametrize("backend", ["opencl", "triton"])
@pytest.mark.parametrize("case", ["same-even-dilated", "circular", "grouped-same-reflect",
                                  "conv1d-grouped"])  # fmt: skip
def test_conv_variant_on_device_backends(case, backend):
    _check_case(case, backend)


def _check_case(case: str, backend: str) -> None:
    _available(backend)
    torch.manual_seed(0)
    layer, shape = CASES[case]
    model = nn.Sequential(layer).eval()
    result = gp.prune(model, "tile", 0.75, target=POCL, exclude_first_last=False)
    assert [lay.name for lay in result.layers] == ["0"] and not result.skipped
    geometry = result.plan["0"].geometry
    assert geometry == ConvGeometry.of(layer) and geometry.groups == layer.groups
    assert PrunePlan.from_dict(result.plan.to_dict()) == result.plan  # the header round trip
    x = torch.randn(shape)
    out = compile(model, POCL, backend=backend)
    new = out[0]
    assert isinstance(new, SkipGroupedConv2d if layer.groups > 1 else SkipConv2d)
    assert [lay.name for lay in out.gpuprune_compile.layers] == ["0"]
    assert not out.gpuprune_compile.dense
    with torch.no_grad():
        want = model(x)
        got = out(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(new.weight, model[0].weight.detach())  # read-only masked weight
    # per group, whole blocks of that group's [M/G, K] GEMM are pruned: blocks never span groups
    lay = result.layers[0]
    g = layer.groups
    assert lay.blocks_total == g * (-(-64 // g // 32)) * (-(-lay.shape[1] // 32))


def test_grouped_conv_masks_are_chosen_per_group():
    torch.manual_seed(0)
    conv = nn.Conv2d(96, 48, 3, padding=1, groups=3)  # 3 group GEMMs of 16x288, SIMD block 4x1
    with torch.no_grad():
        conv.weight[16:32] *= 100  # group 1 dominates: a whole-layer ranking would prune 0 and 2
    model = nn.Sequential(conv)
    gp.prune(model, "simd", 0.5, target=POCL, exclude_first_last=False)
    kept = (model[0].weight != 0).reshape(3, -1).float().mean(dim=1)
    torch.testing.assert_close(kept, torch.full((3,), 0.5), atol=0.02, rtol=0)


def test_depthwise_and_too_small_groups_stay_dense_and_are_named():
    model = nn.Sequential(
        nn.Conv2d(8, 64, 1),
        nn.Conv2d(64, 64, 3, padding=1, groups=64),  # depthwise: 1x9 per group
        nn.Conv2d(64, 64, 3, padding=1, groups=4),  # 16x144 per group: under a 32x32 tile
        nn.Conv2d(64, 64, 1),
        nn.Conv2d(64, 64, 1),
        nn.ConvTranspose2d(64, 8, 2, stride=2),  # the last GEMM layer (its Conv2d view)
    ).eval()
    result = gp.prune(model, "tile", 0.75, target=POCL, skip_small=True)
    why = {s.name: s.reason for s in result.skipped}
    assert [lay.name for lay in result.layers] == ["3", "4"]
    assert why["0"].startswith("first or last")
    assert why["1"].startswith("depthwise conv")
    assert "group GEMMs" in why["2"] and "smaller than one block" in why["2"]
    assert why["5"].startswith("first or last")
    assert list(why) == ["0", "1", "2", "5"]  # module order
    assert result.plan.skipped == result.skipped
    restored = PrunePlan.from_dict(result.plan.to_dict())
    assert restored.skipped == result.skipped
    out = compile(model, POCL, backend="reference")
    dense = {d.name: d.reason for d in out.gpuprune_compile.dense}
    assert set(dense) == {"0", "1", "2", "5"} and dense["1"] == why["1"]
    text = gp.sparsity_report(model)
    for name in ("0", "1", "2", "3", "4", "5"):
        assert any(line.split("│")[1].strip() == name for line in text.splitlines() if "│" in line)
    total = sum(p.numel() for n, p in model.named_parameters() if "weight" in n or "original" in n)
    assert f"/{total}" in text  # the report's total is the model's total
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(x), rtol=1e-4, atol=1e-4)


def test_plan_version_1_skipped_names_still_load():
    model = nn.Sequential(nn.Conv2d(16, 64, 3), nn.Conv2d(64, 64, 3))
    plan = gp.prune(model, "tile", 0.5, target=POCL, exclude_first_last=False).plan
    data = plan.to_dict() | {"version": "gpuprune-plan/1", "skipped": ["x"]}
    for lay in data["layers"]:
        for key in ("groups", "pre_pad", "padding_mode"):
            del lay["geometry"][key]
    old = PrunePlan.from_dict(data)
    assert old.layers == plan.layers and old.skipped[0].name == "x"


def test_latency_probe_times_the_kernel_on_the_pre_padded_input():
    from gpuprune.gemm import gemm_view
    from gpuprune.kernels import get_backend
    from gpuprune.latency.geometry import geometry_of
    from gpuprune.latency.measure import build_layer

    conv = nn.Conv2d(16, 64, 4, padding="same", padding_mode="reflect")
    geom = geometry_of("c", conv, (8, 7), 2)
    run = build_layer(get_backend("reference"), geom, POCL, "tile", gemm_view(conv.weight).detach())
    assert tuple(run().shape) == (2, 64, *geom.out_hw) == (2, 64, 8, 7)
