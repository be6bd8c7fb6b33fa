"""Masks: stable under training, exact zeros, survive state_dict, finalize changes nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_helpers import SMALL
from torch import nn
from torch.nn.utils import parametrize

from gpuprune.prune import Pruner, finalize, get_mask, masked_layers, set_mask

METHODS = ["tile", "simd", "simd-balanced", "unstructured", "filter", "ssl", "balanced", "nm"]


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 48),
        nn.ReLU(),
        nn.Linear(48, 10),
    )


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(METHODS), st.floats(0.1, 0.9))
def test_masks_survive_training_and_pruned_weights_stay_zero(method, sparsity):
    torch.manual_seed(0)
    model = net()
    pruner = Pruner(model, method, target=SMALL, input_size=(3, 8, 8))
    pruner.apply(sparsity)
    before = {n: m.clone() for n, m in pruner.masks.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(3):
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, mod in masked_layers(model).items():
        mask = get_mask(mod)
        assert torch.equal(mask, before[name]), name
        w = mod.weight
        assert (w[~mask] == 0).all() and not torch.signbit(w[~mask]).any()
        assert w[mask].ne(0).any()  # kept weights really train


def test_finalize_changes_no_output():
    model = net().eval()
    Pruner(model, "tile", target=SMALL, input_size=(3, 8, 8)).apply(0.6)
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    finalize(model)
    assert not masked_layers(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert torch.equal(model(x), out)


def test_mask_is_in_state_dict_and_reloads():
    model = net()
    pruner = Pruner(model, "simd", target=SMALL, input_size=(3, 8, 8))
    pruner.apply(0.5)
    state = model.state_dict()
    assert any(k.endswith("parametrizations.weight.0.mask") for k in state)
    other = net()
    for name, mask in pruner.masks.items():
        set_mask(other.get_submodule(name), torch.ones_like(mask))
    other.load_state_dict(state)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model.eval()(x), other.eval()(x))


def test_reapply_reuses_the_parametrization_and_is_monotone():
    model = net()
    pruner = Pruner(model, "unstructured", input_size=(3, 8, 8))
    pruner.apply(0.3)
    first = {n: m.clone() for n, m in pruner.masks.items()}
    pruner.apply(0.6)
    for name, mod in masked_layers(model).items():
        assert len(mod.parametrizations.weight) == 1
        assert not (pruner.masks[name] & ~first[name]).any()  # nothing pruned comes back


def test_set_mask_rejects_wrong_shape():
    with pytest.raises(ValueError, match="neither the weight's"):
        set_mask(nn.Linear(4, 3), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="not the GEMM view"):
        set_mask(nn.Conv2d(2, 3, 3), torch.ones(3, 9, dtype=torch.bool))


def test_pruning_does_not_change_a_copy():
    model = net()
    clone = copy.deepcopy(model)
    Pruner(model, "filter", input_size=(3, 8, 8)).apply(0.5)
    assert not masked_layers(clone)


def test_masked_weight_is_the_stored_weight_only_while_everything_is_kept():
    from gpuprune.prune.masks import masked_weight

    layer = nn.Linear(6, 4)
    assert masked_weight(layer) is layer.weight  # no mask: the plain weight
    set_mask(layer, torch.ones(4, 6, dtype=torch.bool))
    stored = layer.parametrizations.weight.original
    assert masked_weight(layer) is stored  # all kept: no parametrization pass
    keep = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    set_mask(layer, keep)
    with torch.no_grad():
        stored.add_(1.0)  # as a training step may leave pruned originals non-zero
    got = masked_weight(layer)
    assert got is not stored and torch.equal(got, torch.where(keep, stored, 0.0))
