"""inference_layout: NHWC weights for the block's duration, the model unchanged afterwards."""

from __future__ import annotations

import torch
from torch import nn

from gpuprune.train.layout import inference_layout


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6 * 5, 4)).eval()  # fmt: skip


def test_channels_last_inside_restored_after_same_parameters_same_outputs() -> None:
    net, x = _net(), torch.randn(2, 3, 6, 5)
    conv = net[0]
    params = list(net.parameters())
    before = net(x)
    with inference_layout(net):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv.weight.is_contiguous()
        inside = net(x)
    assert conv.weight.is_contiguous()
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-6)


def test_restored_when_the_block_raises() -> None:
    net = _net()
    try:
        with inference_layout(net):
            raise KeyError("boom")
    except KeyError:
        pass
    assert net[0].weight.is_contiguous()


def test_a_channels_last_model_and_one_without_convs_are_left_alone() -> None:
    net = _net().to(memory_format=torch.channels_last)
    with inference_layout(net):
        pass
    assert not net[0].weight.is_contiguous()  # still NHWC: it was the caller's choice
    mlp = nn.Linear(3, 2)
    with inference_layout(mlp) as same:
        assert same is mlp
