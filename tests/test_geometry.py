"""ConvGeometry of every Conv1d/Conv2d variant: pre-pad + kernel geometry reproduce torch's conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gpuprune.errors import UnsupportedLayerError, UserError
from gpuprune.geometry import ConvGeometry


def _lowered(geometry: ConvGeometry, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The conv as the skip layers run it: pre-pad, then groups=1 convs with zero padding."""
    if any(geometry.pre_pad):
        mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
        x = F.pad(x, geometry.pre_pad, mode=mode)
    k = geometry.kernel()
    ws, xs = weight.chunk(geometry.groups), x.chunk(geometry.groups, dim=1)
    parts = [F.conv2d(xi, wi, None, k.stride, k.padding, k.dilation)
             for wi, xi in zip(ws, xs, strict=True)]  # fmt: skip
    return torch.cat(parts, dim=1)


@settings(max_examples=40, deadline=None)
@given(
    dims=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2, 3]),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    dilation=st.integers(1, 2),
    stride=st.integers(1, 2),
    padding=st.sampled_from(["same", "valid", 0, 1, 2]),
    mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    size=st.tuples(st.integers(5, 9), st.integers(5, 9)),
)
def test_geometry_reproduces_torch(dims, groups, kernel, dilation, stride, padding, mode, size):
    if padding == "same":
        stride = 1  # torch allows 'same' only at stride 1
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    ks = kernel[1] if dims == 1 else kernel
    conv = cls(2 * groups, 3 * groups, ks, stride=stride, padding=padding, dilation=dilation,
               groups=groups, bias=False, padding_mode=mode)  # fmt: skip
    x = torch.randn(1, 2 * groups, *(size[1:] if dims == 1 else size))
    try:
        want = conv(x)
    except RuntimeError:  # e.g. reflect padding wider than the input: torch refuses too
        return
    g = ConvGeometry.of(conv)
    x2 = x.unsqueeze(2) if dims == 1 else x
    w2 = conv.weight.unsqueeze(2) if dims == 1 else conv.weight
    got = _lowered(g, w2, x2)
    assert g.out_hw(*x2.shape[-2:]) == tuple(got.shape[-2:])
    torch.testing.assert_close(got.squeeze(2) if dims == 1 else got, want)
    assert g.k == conv.weight[0].numel()
    assert ConvGeometry.from_dict(g.to_dict()) == g


def test_geometry_refuses_what_has_no_lowering_in_one_line():
    for layer in (nn.ConvTranspose2d(3, 3, 3), nn.Conv3d(3, 3, 3), nn.Linear(3, 3)):
        with pytest.raises(UnsupportedLayerError, match=type(layer).__name__) as info:
            ConvGeometry.of(layer)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="groups"):
        ConvGeometry(6, 3, groups=4)
    with pytest.raises(UserError, match="pre_pad"):
        ConvGeometry(6, 3, pre_pad=(1, 2, 3))
    with pytest.raises(UserError, match="padding_mode"):
        ConvGeometry(6, 3, padding_mode="mirror")
