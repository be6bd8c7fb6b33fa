"""Schedules: when the training loop calls ``Pruner.apply`` and with what sparsity.

The loop asks two things at each optimizer step ``step`` of ``total_steps``::

    if schedule.should_apply(step, total_steps):
        pruner.apply(schedule.sparsity_at(step, total_steps, final_sparsity), data=batches)

* :class:`OneShot`: prune once, at step 0, to the final sparsity; the rest is fine-tuning.
* :class:`Iterative`: ``steps`` equal phases; each starts by pruning to ``final * (i+1)/steps``.
* :class:`AGP`: Zhu & Gupta 2017 gradual pruning,
  ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3`` applied every ``frequency`` steps
  between ``start_step`` (t0) and ``end_step`` (t1, default the last step).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuprune.errors import UserError
from gpuprune.registry import Registry

SCHEDULES: Registry[type] = Registry("schedule")


@SCHEDULES.register("one-shot")
@dataclass(frozen=True)
class OneShot:
    """Prune once, before the first step."""

    def sparsity_at(self, step: int, total_steps: int, final_sparsity: float) -> float:
        return final_sparsity

    def should_apply(self, step: int, total_steps: int) -> bool:
        return step == 0


@SCHEDULES.register("iterative")
@dataclass(frozen=True)
class Iterative:
    """Prune a step, fine-tune, repeat: ``steps`` equal phases, sparsity rising linearly."""

    steps: int = 4

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserError(
                f"iterative schedule needs steps >= 1, got {self.steps}", "pass steps=4"
            )

    def _phase_len(self, total_steps: int) -> int:
        return max(1, total_steps // self.steps)

    def sparsity_at(self, step: int, total_steps: int, final_sparsity: float) -> float:
        phase = min(step // self._phase_len(total_steps), self.steps - 1)
        return final_sparsity * (phase + 1) / self.steps

    def should_apply(self, step: int, total_steps: int) -> bool:
        length = self._phase_len(total_steps)
        return step % length == 0 and step // length < self.steps


@SCHEDULES.register("agp")
@dataclass(frozen=True)
class AGP:
    """Automated gradual pruning (Zhu & Gupta 2017), cubic ramp from ``initial_sparsity``."""

    start_step: int = 0
    end_step: int | None = None  # None: the last step of training
    frequency: int = 1  # prune every this many steps inside the ramp
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        if self.start_step < 0 or self.frequency < 1:
            raise UserError(
                "AGP needs start_step >= 0 and frequency >= 1", "pass e.g. frequency=100"
            )
        if self.end_step is not None and self.end_step <= self.start_step:
            raise UserError(
                f"AGP end_step {self.end_step} must be after start_step {self.start_step}",
                "pass a larger end_step",
            )

    def _end(self, total_steps: int) -> int:
        end = self.end_step if self.end_step is not None else max(total_steps - 1, 0)
        return max(end, self.start_step + 1)

    def sparsity_at(self, step: int, total_steps: int, final_sparsity: float) -> float:
        t0, t1 = self.start_step, self._end(total_steps)
        if step < t0:
            return self.initial_sparsity
        frac = min(1.0, (step - t0) / (t1 - t0))
        return final_sparsity + (self.initial_sparsity - final_sparsity) * (1.0 - frac) ** 3

    def should_apply(self, step: int, total_steps: int) -> bool:
        t0, t1 = self.start_step, self._end(total_steps)
        return t0 <= step <= t1 and ((step - t0) % self.frequency == 0 or step == t1)


def get_schedule(name: str, **options) -> OneShot | Iterative | AGP:
    """A schedule from its registered name (``one-shot``, ``iterative``, ``agp``) and options."""
    cls = SCHEDULES.get(name)
    try:
        return cls(**options)
    except TypeError as err:
        raise UserError(
            f"bad option for schedule {name!r}: {err}", "check the schedule's options"
        ) from None
