"""Allocation: uniform, global threshold, sensitivity, explicit; achieved sparsity globally."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_helpers import spec
from torch import nn

from gpuprune.arch import get_target, list_targets
from gpuprune.errors import UserError
from gpuprune.prune import Pruner, allocate, get_method, prune
from gpuprune.prune.allocation import solve_threshold


@st.composite
def model_case(draw):
    """Layers of >= 60 blocks (so half a block per layer is < 1%), a method, target, sparsity."""
    method = draw(
        st.sampled_from(["tile", "simd", "simd-balanced", "unstructured", "filter", "ssl"])
    )
    target = get_target(draw(st.sampled_from(list_targets())))
    bm, bk = target.tile_block() if method == "tile" else target.simd_block()
    specs = {}
    for i in range(draw(st.integers(2, 4))):
        m = draw(st.integers(6 * bm, 7 * bm)) if method == "tile" else draw(st.integers(60, 140))
        k = draw(st.integers(10 * bk, 12 * bk)) if method == "tile" else draw(st.integers(60, 160))
        specs[f"l{i}"] = spec(m, k, target, name=f"l{i}")
    s, allocation = draw(st.floats(0.05, 0.9)), draw(st.sampled_from(["uniform", "global"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))  # reproducible importances
    imps = {
        n: torch.rand(sp.shape, generator=g) * (1 + i) for i, (n, sp) in enumerate(specs.items())
    }
    return method, specs, s, allocation, imps


@settings(max_examples=20, deadline=None)
@given(model_case())
def test_global_sparsity_within_one_percent(case):
    method, specs, s, allocation, imps = case
    meth = get_method(method)
    alloc = allocate(allocation, s, specs, importances=imps, method=meth)
    pruned = sum(int((~meth.mask(imps[n], alloc[n], sp)).sum()) for n, sp in specs.items())
    total = sum(sp.numel for sp in specs.values())
    assert abs(pruned / total - s) <= 0.01


def test_global_prunes_the_weak_layer_harder():
    specs = {"weak": spec(64, 64, None, name="weak"), "strong": spec(64, 64, None, name="strong")}
    imps = {"weak": torch.rand(64, 64), "strong": torch.rand(64, 64) + 0.5}
    alloc = allocate("global", 0.5, specs, importances=imps, method=get_method("unstructured"))
    # the threshold t solves 0.5 + 2 (t - 0.5) = 1 (scores uniform on [0,1] and [0.5,1.5]): t = 0.75
    assert alloc["weak"] == pytest.approx(0.75, abs=0.04)
    assert alloc["strong"] == pytest.approx(0.25, abs=0.04)
    assert (alloc["weak"] + alloc["strong"]) / 2 == pytest.approx(0.5, abs=1e-3)


def test_explicit_allocation_and_its_errors():
    specs = {"a": spec(8, 8, None, name="a"), "b": spec(8, 8, None, name="b")}
    assert allocate({"a": 0.25}, 0.5, specs) == {"a": 0.25, "b": 0.5}
    with pytest.raises(UserError, match="not pruned"):
        allocate({"zz": 0.1}, 0.5, specs)
    with pytest.raises(UserError, match="outside"):
        allocate({"a": 1.0}, 0.5, specs)
    with pytest.raises(UserError, match="uniform"):
        allocate("magic", 0.5, specs)


def test_solve_threshold_meets_the_target_and_spares_the_sensitive_layer():
    points = np.array([0.0, 0.5, 0.9])
    curves = {"fragile": np.array([0.0, 2.0, 5.0]), "robust": np.array([0.0, 0.01, 0.1])}
    out = solve_threshold(0.6, {"fragile": 100, "robust": 100}, points, curves)
    assert (out["fragile"] + out["robust"]) / 2 == pytest.approx(0.6, abs=1e-6)
    assert out["robust"] == pytest.approx(0.9) and out["fragile"] < out["robust"]


def test_sensitivity_allocation_on_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)
    )
    xs = [torch.randn(32, 16) for _ in range(2)]
    with torch.no_grad():
        data = [(x, model(x)) for x in xs]  # the dense model is perfect: any pruning hurts
    pruner = Pruner(
        model, "unstructured", allocation="sensitivity", exclude_first_last=False, input_size=(16,)
    )
    # each layer's loss increase when pruned alone to 50%, measured here by hand
    alone = {}
    for name in ("0", "2", "4"):
        trial = copy.deepcopy(model)
        prune(trial, "unstructured", 0.5, exclude=[n for n in ("0", "2", "4") if n != name],
              exclude_first_last=False, input_size=(16,))  # fmt: skip
        with torch.no_grad():
            alone[name] = sum(float(nn.functional.mse_loss(trial(x), y)) for x, y in data)
    result = pruner.apply(0.5, data=data, loss_fn=nn.functional.mse_loss)
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    per = {lr.name: lr.sparsity for lr in result.layers}
    # one threshold on loss increase: the most sensitive layer at 50% gets <= 50%, the least >= 50%
    assert per[max(alone, key=alone.get)] <= 0.5 + 1e-3
    assert per[min(alone, key=alone.get)] >= 0.5 - 1e-3
    with pytest.raises(UserError, match="needs held-out data"):
        pruner.apply(0.5)


def test_sensitivity_with_flat_curves_still_meets_the_target():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32))
    data = [(torch.randn(16, 8), torch.zeros(16, dtype=torch.long))]
    constant = lambda out, y: out.sum() * 0  # noqa: E731 - a loss no pruning can change
    pruner = Pruner(model, "unstructured", allocation="sensitivity", exclude_first_last=False,
                    input_size=(8,))  # fmt: skip
    result = pruner.apply(0.4, data=data, loss_fn=constant)
    assert result.sparsity == pytest.approx(0.4, abs=0.01)
