"""SSL: the group-lasso penalty, and pruning the groups it shrinks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpuprune.errors import UserError
from gpuprune.prune import prune, ssl_penalty


def conv_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    )  # fmt: skip


def test_penalty_matches_group_norms():
    model = conv_net()
    w = model[2].weight.reshape(8, -1)
    got = ssl_penalty(model, groups=("filter", "shape", "channel"))
    want = w.norm(dim=1).sum() + w.norm(dim=0).sum() + w.reshape(8, 8, 9).norm(dim=(0, 2)).sum()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_penalty_gradient_is_finite_on_pruned_groups():
    model = conv_net()
    prune(
        model, method="ssl", sparsity=0.5, method_options={"group": "filter"}, input_size=(3, 8, 8)
    )
    ssl_penalty(model).backward()
    grad = model[2].parametrizations.weight.original.grad
    assert torch.isfinite(grad).all()


def test_group_lasso_training_then_ssl_pruning_removes_shrunk_columns():
    torch.manual_seed(0)
    model = conv_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(8, 3, 8, 8)
    target = model(x).detach()
    first = ssl_penalty(model, groups=("shape",)).item()
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target) + 0.05 * ssl_penalty(
            model, groups=("shape",)
        )
        loss.backward()
        opt.step()
    assert ssl_penalty(model, groups=("shape",)).item() < first
    result = prune(model, method="ssl", sparsity=0.5, input_size=(3, 8, 8))
    w = model[2].weight.reshape(8, -1)
    zero_cols = (w == 0).all(dim=0)
    assert zero_cols.float().mean().item() == pytest.approx(0.5, abs=1 / 72)
    assert result.layers[0].block == (8, 1)


def test_unknown_group_is_a_user_error():
    with pytest.raises(UserError, match="filter"):
        ssl_penalty(conv_net(), groups=("kernel",))


def test_channel_group_prunes_whole_input_channels():
    """In the K order (kh, kw, c_in) a channel's columns are one per tap, C apart: the channel
    group keeps or prunes all of them, in every row, and the smallest channels go first."""
    torch.manual_seed(0)
    model = conv_net()
    with torch.no_grad():
        model[2].weight[:, [1, 6]] *= 1e-3  # input channels 1 and 6 are the smallest groups
    result = prune(model, method="ssl", sparsity=0.25, method_options={"group": "channel"},
                   input_size=(3, 8, 8), exclude_first_last=False)  # fmt: skip
    kept = model[2].weight != 0  # [8, 8, 3, 3]
    per_channel = kept.permute(1, 0, 2, 3).reshape(8, -1)
    assert (per_channel.all(1) | ~per_channel.any(1)).all()  # each channel whole
    assert per_channel.any(1).tolist() == [c not in (1, 6) for c in range(8)]
    assert dict((lay.name, lay.block) for lay in result.layers)["2"] == (8, 1)
