"""Schedules: one-shot, iterative and AGP (Zhu & Gupta cubic)."""

from __future__ import annotations

import pytest

from gpuprune.errors import UserError
from gpuprune.prune import AGP, Iterative, OneShot, get_schedule


def test_one_shot_prunes_once_to_final():
    s = OneShot()
    assert [st for st in range(10) if s.should_apply(st, 10)] == [0]
    assert s.sparsity_at(0, 10, 0.8) == 0.8


def test_iterative_phases_rise_linearly():
    s = Iterative(steps=4)
    assert [st for st in range(100) if s.should_apply(st, 100)] == [0, 25, 50, 75]
    assert [s.sparsity_at(st, 100, 0.8) for st in (0, 25, 50, 99)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8]
    )


def test_agp_follows_the_cubic():
    s = AGP(start_step=10, end_step=110, frequency=10)
    final = 0.9
    assert s.sparsity_at(5, 200, final) == 0.0
    assert s.sparsity_at(10, 200, final) == 0.0
    assert s.sparsity_at(60, 200, final) == pytest.approx(final * (1 - 0.5**3))
    assert s.sparsity_at(110, 200, final) == pytest.approx(final)
    assert s.sparsity_at(150, 200, final) == pytest.approx(final)
    values = [s.sparsity_at(t, 200, final) for t in range(0, 200)]
    assert values == sorted(values)
    assert [t for t in range(200) if s.should_apply(t, 200)] == list(range(10, 111, 10))


def test_agp_defaults_to_the_last_step_and_ends_on_it():
    s = AGP(frequency=7)
    steps = [t for t in range(50) if s.should_apply(t, 50)]
    assert steps[0] == 0 and steps[-1] == 49
    assert s.sparsity_at(49, 50, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "make",
    [lambda: Iterative(0), lambda: AGP(frequency=0), lambda: AGP(start_step=5, end_step=5)],
)
def test_bad_schedules_are_user_errors(make):
    with pytest.raises(UserError):
        make()


def test_get_schedule_by_name():
    assert isinstance(get_schedule("agp", start_step=3), AGP)
    with pytest.raises(UserError, match="one-shot"):
        get_schedule("cosine")
    with pytest.raises(UserError, match="bad option"):
        get_schedule("iterative", stepz=3)


def test_agp_drives_a_pruner_to_the_final_sparsity_with_shrinking_masks():
    import torch
    from torch import nn

    from gpuprune.prune import Pruner

    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    pruner = Pruner(model, "unstructured", input_size=(32,))
    schedule, total, previous = AGP(start_step=2, end_step=12, frequency=3), 15, None
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(total):
        if schedule.should_apply(step, total):
            result = pruner.apply(schedule.sparsity_at(step, total, 0.8))
            mask = pruner.masks["2"]
            if previous is not None:
                assert not (mask & ~previous).any()
            previous = mask.clone()
        opt.zero_grad()
        model(torch.randn(8, 32)).square().mean().backward()
        opt.step()
    assert result.sparsity == pytest.approx(0.8, abs=1e-3)
