"""Model factory: shapes, layer counts, width scaling, residuals, user factories, bad names."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from gpuprune.errors import UserError
from gpuprune.models import MODELS, create_model, list_models


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_registry_lists_builtin_models() -> None:
    names = list_models()
    assert {"vgg16", "resnet20", "tiny-cnn"} <= set(names)


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_vgg16_structure_and_shapes(size: int, in_channels: int) -> None:
    model = create_model("vgg16", num_classes=7, in_channels=in_channels, width=0.125).eval()
    convs = _convs(model)
    assert len(convs) == 13
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert len([m for m in model.modules() if isinstance(m, nn.Linear)]) == 2
    assert convs[0].in_channels == in_channels
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)


def test_vgg16_width_scales_channels() -> None:
    quarter = [c.out_channels for c in _convs(create_model("vgg16", width=0.25))]
    assert quarter == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    full = [c.out_channels for c in _convs(create_model("vgg16"))]
    assert max(full) == 512 and min(full) == 64
    assert create_model("vgg16").classifier[0].in_features == 512


def test_resnet20_has_residual_connections() -> None:
    model = create_model("resnet20", width=0.5).eval()
    assert len([c for c in _convs(model) if c.kernel_size == (3, 3)]) == 19
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Zeroing a block's residual branch must leave its output = relu(input): only true with a skip.
    block = model.layers[1]
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.relu(torch.randn(2, block.conv1.in_channels, 8, 8))
    assert torch.allclose(block(x), x)


def test_user_factory_by_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("user_nets_for_test")

    def build(num_classes: int = 10) -> nn.Module:  # accepts only one of the keywords
        return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))

    mod.build = build  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "user_nets_for_test", mod)
    model = create_model("user_nets_for_test:build", num_classes=3)
    assert model(torch.randn(1, 1, 2, 2)).shape == (1, 3)


@pytest.mark.parametrize(
    "name, needle",
    [
        ("vgg17", "vgg16"),
        ("no_such_module_xyz:f", "no_such_module_xyz"),
        ("gpuprune.models:nothing_here", "nothing_here"),
        (":f", "package.module:factory"),
    ],
)
def test_bad_model_names_are_user_errors(name: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        create_model(name)


def test_bad_width_is_user_error() -> None:
    with pytest.raises(UserError, match="width"):
        create_model("vgg16", width=0)


def test_users_can_register_models() -> None:
    @MODELS.register("test-linear-only", replace=True)
    def _f(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    assert "test-linear-only" in list_models()
    assert isinstance(create_model("test-linear-only"), nn.Module)


def test_resnet50_has_torchvision_shapes() -> None:
    model = create_model("resnet50", num_classes=1000).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 53  # 49 in the main path + 4 projection shortcuts
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's count
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
