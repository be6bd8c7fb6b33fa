"""Training loop: learning, schedules, resume equality, checkpoints, NaN handling, pruning hooks."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import gpuprune.prune as gp
from gpuprune.errors import UserError
from gpuprune.train import NonFiniteLossError, PrunerHook, TrainConfig, evaluate, fit, lr_at

FAST = TrainConfig(epochs=3, batch_size=16, lr=0.05, label_smoothing=0.05, seed=7)


def test_lr_schedules() -> None:
    cos = TrainConfig(lr=0.1, warmup=0.1)
    assert lr_at(cos, 0, 100) == pytest.approx(0.01)
    assert lr_at(cos, 10, 100) == pytest.approx(0.1)
    assert lr_at(cos, 99, 100) < 0.001
    one = TrainConfig(lr=0.1, schedule="onecycle")
    values = [lr_at(one, s, 100) for s in range(100)]
    assert max(values) == pytest.approx(0.1, rel=1e-3) and values.index(max(values)) == 25
    assert values[0] == pytest.approx(0.01)
    assert lr_at(TrainConfig(lr=0.1, schedule="constant"), 50, 100) == 0.1


def test_bad_recipe_is_user_error() -> None:
    with pytest.raises(UserError, match="momentum"):
        TrainConfig(momentum=1.5)


def test_fit_learns_and_writes_metrics(synth, tiny, tmp_path: Path) -> None:
    model = tiny()
    _, before = evaluate(model, synth)
    result = fit(model, synth, FAST, run_dir=tmp_path, progress=True)
    assert result.test_acc > 0.8 > before + 0.3
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    assert json.loads(lines[-1])["test_acc"] == pytest.approx(result.test_acc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]


class _StopAt:
    """Wraps a hook (or nothing) and raises KeyboardInterrupt at one step, like a Ctrl-C."""

    def __init__(self, inner, step: int) -> None:
        self.inner, self.step = inner, step

    def before_step(self, model, step, total):
        if step == self.step:
            raise KeyboardInterrupt
        if self.inner is not None:
            self.inner.before_step(model, step, total)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _hooked(model, final=0.6):
    pruner = gp.Pruner(model, "unstructured", exclude_first_last=False)
    return PrunerHook(pruner, gp.AGP(frequency=3), final)


def test_resume_reproduces_uninterrupted_run(synth, tiny, tmp_path: Path) -> None:
    steps = len(synth.train_y) // FAST.batch_size  # 24 per epoch
    ref_model = tiny()
    ref = fit(ref_model, synth, FAST, hook=_hooked(ref_model), progress=False)

    model = tiny()
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 3, after epoch 2's checkpoint
        fit(model, synth, FAST, run_dir=tmp_path, hook=_StopAt(_hooked(model), 2 * steps + 5),
            progress=False)  # fmt: skip
    fresh = tiny(seed=123)  # different init: everything must come from the checkpoint
    hook = _hooked(fresh)
    resumed = fit(fresh, synth, FAST, run_dir=tmp_path, resume=True, hook=hook, progress=False)

    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in ref.history]
    assert resumed.test_acc == ref.test_acc
    for (name, a), (_, b) in zip(ref_model.state_dict().items(), fresh.state_dict().items(),
                                 strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    assert hook.sparsity == pytest.approx(0.6)
    assert gp.Pruner(fresh, "unstructured", exclude_first_last=False).result().sparsity == \
        pytest.approx(0.6, abs=0.01)  # fmt: skip


def test_resume_with_other_recipe_is_refused(synth, tiny, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64, steps_per_epoch=2)
    fit(tiny(), synth, cfg, run_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="different recipe.*lr"):
        fit(tiny(), synth, TrainConfig(epochs=1, batch_size=64, steps_per_epoch=2, lr=0.2),
            run_dir=tmp_path, resume=True, progress=False)  # fmt: skip


class _NaNPenalty:
    def before_step(self, model, step, total): ...
    def after_step(self, model): ...
    def penalty(self, model):
        return torch.tensor(math.nan)


def test_nan_loss_stops_with_clear_message(synth, tiny) -> None:
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1 step 1.*lower"):
        fit(tiny(), synth, FAST, hook=_NaNPenalty(), progress=False)


def test_pruning_schedule_reaches_final_sparsity_and_keeps_zeros(synth, tiny) -> None:
    model = tiny()
    pruner = gp.Pruner(model, "filter", exclude_first_last=False)
    hook = PrunerHook(pruner, gp.Iterative(steps=3), 0.5)
    cfg = TrainConfig(epochs=1, batch_size=32, steps_per_epoch=9)
    fit(model, synth, cfg, hook=hook, progress=False)
    assert [round(s, 3) for _, s in hook.events] == [0.167, 0.333, 0.5]
    assert [e for e, _ in hook.events] == [0, 3, 6]
    for name, mask in pruner.masks.items():
        weight = dict(model.named_modules())[name].weight
        assert torch.all(weight[~mask] == 0)
    assert pruner.result().sparsity == pytest.approx(0.5, abs=0.05)


def test_ssl_penalty_shrinks_groups(synth, tiny) -> None:
    cfg = TrainConfig(epochs=1, batch_size=32, steps_per_epoch=8, weight_decay=0)
    norms = []
    for strength in (0.0, 0.05):
        model = tiny()
        pruner = gp.Pruner(model, "ssl", exclude_first_last=False)
        hook = PrunerHook(pruner, gp.OneShot(), 0.0, ssl_strength=strength)
        fit(model, synth, cfg, hook=hook, progress=False)
        norms.append(float(gp.ssl_penalty(model).detach()))
    assert norms[1] < 0.8 * norms[0]


def test_distillation_follows_the_teacher(synth, tiny) -> None:
    from gpuprune.train.config import distill_loss

    logits = torch.randn(4, 10)
    assert float(distill_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(logits, -logits, 4.0)) > 0
    teacher = tiny(seed=3)
    fit(teacher, synth, FAST, progress=False)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.zero_grad(set_to_none=True)
    # labels scrambled: a student that learns anything learns it from the teacher alone
    wrong = dataclasses.replace(synth, train_y=(synth.train_y + 1) % 10)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=7, distill_alpha=1.0,
                      distill_temperature=2.0)  # fmt: skip
    student = tiny(seed=4)
    fit(student, wrong, cfg, teacher=teacher, progress=False)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, frozen[k])
    assert all(p.grad is None for p in teacher.parameters())
    # the true labels reach the student only through the teacher (its own labels are all wrong)
    assert evaluate(student, synth)[1] > 0.4


def test_distillation_without_teacher_is_user_error(synth, tiny) -> None:
    with pytest.raises(UserError, match="no teacher"):
        fit(tiny(), synth, TrainConfig(epochs=1, batch_size=16, distill_alpha=0.5), progress=False)
def test_eval_after_last_epoch_only_gives_the_same_model_and_accuracy(synth, tiny) -> None:
    from dataclasses import replace

    a, b = tiny(), tiny()
    b.load_state_dict(a.state_dict())
    each = fit(a, synth, FAST, progress=False)
    last = fit(b, synth, replace(FAST, eval_each_epoch=False), progress=False)
    assert last.test_acc == each.test_acc and last.test_loss == each.test_loss
    assert [h["test_acc"] for h in last.history[:-1]] == [None, None]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))
