"""The ``plan`` allocation: a fixed per-layer plan reached in proportion along a schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpuprune.prune as gp
from gpuprune.errors import UserError
from gpuprune.prune.allocation import plan_sparsity
from gpuprune.train import PrunerHook


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(),
                         nn.Flatten(), nn.LazyLinear(10))  # fmt: skip


def _pruner(plan: dict[str, float]) -> gp.Pruner:
    model = _model()
    model(torch.zeros(1, 3, 8, 8))
    return gp.Pruner(model, "unstructured", allocation="plan", exclude_first_last=False,
                     input_size=(3, 8, 8), allocation_options={"plan": plan})  # fmt: skip


def test_plan_is_reached_exactly_and_ramped_in_proportion() -> None:
    plan = {"0": 0.25, "2": 0.8, "5": 0.5}
    pruner = _pruner(plan)
    final = plan_sparsity(plan, pruner.specs)
    res = pruner.apply(final)
    for lay in res.layers:
        assert lay.sparsity == pytest.approx(plan[lay.name], abs=0.01)
    half = pruner.apply(final / 2)
    for lay in half.layers:
        assert lay.sparsity == pytest.approx(plan[lay.name] / 2, abs=0.01)
    assert pruner.apply(0.99).layers[1].sparsity == pytest.approx(0.8, abs=0.01)  # never past


def test_schedule_ends_on_the_plan() -> None:
    plan = {"0": 0.0, "2": 0.9, "5": 0.3}
    pruner = _pruner(plan)
    final = plan_sparsity(plan, pruner.specs)
    hook = PrunerHook(pruner, gp.get_schedule("agp", end_step=4, frequency=1), final)
    seen = []
    for step in range(6):
        hook.before_step(pruner.model, step, 6)
        seen.append(pruner.result().layers[1].sparsity)
    assert seen == sorted(seen) and seen[0] < 0.9
    assert seen[-1] == pytest.approx(0.9, abs=0.01)


def test_plan_errors_name_the_problem() -> None:
    with pytest.raises(UserError, match="needs a plan"):
        _pruner(None).apply(0.5)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="plan names layer 'nope'"):
        _pruner({"nope": 0.5}).apply(0.5)
    with pytest.raises(UserError, match="planned sparsity of layer 2"):
        _pruner({"2": 1.5}).apply(0.5)
