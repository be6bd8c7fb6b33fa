"""Hooks that plug pruning into the training loop: schedules, masks and the SSL penalty.

The loop calls ``before_step`` (the schedule may raise the sparsity and re-prune), adds
``penalty`` to the loss (SSL's group lasso) and calls ``after_step``. Masks are weight
parametrizations (``gpuprune.prune``), so optimizer steps cannot revive pruned weights.
``state_dict`` holds what a resumed run needs before the model's own state is loaded: the masks
create the parametrizations that the saved state dict refers to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn


class TrainHook(Protocol):
    """What the training loop calls; every method may be a no-op (``prepare`` is optional)."""

    def before_step(self, model: nn.Module, step: int, total: int) -> None: ...
    def penalty(self, model: nn.Module) -> torch.Tensor | None: ...
    def after_step(self, model: nn.Module) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PrunerHook:
    """Drive a :class:`gpuprune.prune.Pruner` along a schedule, plus an optional SSL penalty.

    Args:
        pruner: the pruner, built on the (unwrapped) model being trained.
        schedule: ``OneShot``, ``Iterative`` or ``AGP`` (``should_apply``, ``sparsity_at``).
        final: the sparsity at the end of training.
        ssl_strength: weight of ``ssl_penalty(model)`` in the loss (0 turns it off).
        ssl_groups: SSL group kinds (``filter``, ``shape``, ``channel``).
        data: returns a few ``(x, y)`` batches for data-driven importance (or ``None``).
        sync: called after each re-prune (data-parallel runs broadcast rank 0's weights).
    """

    def __init__(
        self,
        pruner: Any,
        schedule: Any,
        final: float,
        ssl_strength: float = 0.0,
        ssl_groups: Iterable[str] = ("filter", "shape"),
        data: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self.pruner, self.schedule, self.final = pruner, schedule, final
        self.ssl_strength, self.ssl_groups = ssl_strength, tuple(ssl_groups)
        self.data, self.sync = data, sync
        self.sparsity = 0.0  # the sparsity last applied
        self.events: list[tuple[int, float]] = []  # (step, sparsity) of each re-prune

    def prepare(self, model: nn.Module) -> None:
        """Give every prunable layer its (all-kept) mask now, before a DDP wrapper is built.

        DistributedDataParallel registers its gradient hooks when it is constructed; weights
        that become parametrized afterwards never report their gradients to it.
        """
        from gpuprune.prune import get_mask, set_mask

        for spec in self.pruner.specs.values():
            if get_mask(spec.module) is None:
                set_mask(spec.module, torch.ones_like(spec.module.weight, dtype=torch.bool))

    def before_step(self, model: nn.Module, step: int, total: int) -> None:
        if not self.schedule.should_apply(step, total):
            return
        target = float(self.schedule.sparsity_at(step, total, self.final))
        self.pruner.apply(target, data=self.data() if self.data is not None else None)
        if self.sync is not None:
            self.sync()
        self.sparsity = target
        self.events.append((step, target))

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if self.ssl_strength <= 0:
            return None
        from gpuprune.prune import ssl_penalty

        return self.ssl_strength * ssl_penalty(model, groups=self.ssl_groups)

    def after_step(self, model: nn.Module) -> None:
        """Nothing to do: the mask parametrization keeps pruned weights at zero."""

    def state_dict(self) -> dict[str, Any]:
        masks = {k: v.cpu() for k, v in self.pruner.masks.items()}
        return {"sparsity": self.sparsity, "events": self.events, "masks": masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from gpuprune.prune import set_mask

        for name, mask in state["masks"].items():
            module = self.pruner.specs[name].module
            set_mask(module, mask.to(module.weight.device))
        self.sparsity = float(state["sparsity"])
        self.events = [(int(s), float(v)) for s, v in state["events"]]
