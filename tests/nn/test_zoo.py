"""Real architectures from torchvision and timm (random weights, small inputs): pruned with tile and
SIMD blocks at 75%, compiled for the cpu backend, equal to the masked model, and every weight
layer either pruned/compiled or named with the reason it is left dense. Skipped when torchvision
or timm is not installed (tests/zoo_helpers.py explains the import shim)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gpuprune.prune as gp
from gpuprune.arch import get_target
from gpuprune.nn import compile
from zoo_helpers import zoo

POCL = get_target("cpu-pocl")  # tile block 32x32, SIMD block 4x1

# name: (build(zoo module), input side, slow)
MODELS = {
    "torchvision:resnet18": (lambda tv: tv.models.resnet18(num_classes=10), 32, True),
    "torchvision:mobilenet_v2": (lambda tv: tv.models.mobilenet_v2(num_classes=10), 32, False),
    "torchvision:mobilenet_v3_small": (
        lambda tv: tv.models.mobilenet_v3_small(num_classes=10), 32, False
    ),
    "torchvision:squeezenet1_0": (lambda tv: tv.models.squeezenet1_0(num_classes=10), 64, False),
    "torchvision:vit": (
        lambda tv: tv.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
            num_classes=10,
        ),
        32,
        False,
    ),
    "torchvision:efficientnet_b0": (lambda tv: tv.models.efficientnet_b0(num_classes=10), 32, True),
    "torchvision:densenet121": (lambda tv: tv.models.densenet121(num_classes=10), 32, True),
    "torchvision:vgg11_bn": (lambda tv: tv.models.vgg11_bn(num_classes=10), 32, True),
    "torchvision:convnext_tiny": (lambda tv: tv.models.convnext_tiny(num_classes=10), 32, True),
    "torchvision:vit_b_16": (
        lambda tv: tv.models.vit_b_16(image_size=32, num_classes=10), 32, True
    ),
    "timm:resnet18d": (lambda t: t.create_model("resnet18d", num_classes=10), 32, True),
    "timm:regnety_002": (lambda t: t.create_model("regnety_002", num_classes=10), 32, False),
    "timm:mobilevitv2_050": (lambda t: t.create_model("mobilevitv2_050", num_classes=10), 64, True),
    "timm:vit_tiny_patch16_224": (
        lambda t: t.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10),
        32,
        True,
    ),
}


def weight_layers(model: nn.Module) -> set[str]:
    """Every Conv/Linear-like layer, and MultiheadAttention's input projection."""
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.conv._ConvNd | nn.Linear):
            names.add(name)
        if isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None:
            names.add(f"{name}.in_proj_weight")
    return names


@pytest.mark.parametrize("method", ["tile", "simd"])
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if m[2] else n for n, m in MODELS.items()]
)
def test_zoo_model_prunes_compiles_and_names_every_layer(name, method):
    lib, _, _ = name.partition(":")
    module = zoo(lib)
    from gpuprune.errors import UserError
    from gpuprune.kernels import get_backend

    try:
        get_backend("cpu").check_available()
    except UserError as err:
        pytest.skip(err.problem)
    build, side, _ = MODELS[name]
    torch.manual_seed(0)
    model = build(module).eval()
    result = gp.prune(model, method, 0.75, target=POCL, skip_small=True,
                      input_size=(3, side, side))  # fmt: skip
    planned, skipped = set(result.plan.names), {s.name for s in result.skipped}
    assert not planned & skipped
    assert weight_layers(model) == planned | skipped  # none left out silently
    assert all(s.reason for s in result.skipped)
    assert result.sparsity == pytest.approx(0.75, abs=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left dense are warned about; checked below
        out = compile(model, backend="cpu")
    report = out.gpuprune_compile
    compiled, dense = {lay.name for lay in report.layers}, {d.name for d in report.dense}
    assert not compiled & dense and compiled | dense == weight_layers(model)
    assert compiled, "nothing compiled"
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        want, got = model(x), out(x)
    scale = float(want.abs().max()) + 1e-6
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * scale)
