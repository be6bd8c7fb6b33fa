"""Cells pruned to a reference cell's latency (config section ``equal_latency``).

For each listed method, a latency-aware plan is chosen on the dense model before fine-tuning:

1. the reference (a uniform cell, e.g. ``tile@0.75``) is priced by the latency model of the
   chosen backend: its masks' kept blocks read off each layer's measured curve, summed over the
   prunable layers (absolute milliseconds, so methods with different kernels are comparable);
2. :func:`gpuprune.latency.plan_latency` picks the method's per-layer sparsities with the least
   estimated loss whose modelled latency is that sum;
3. the cell fine-tunes with ``allocation="plan"``, which ramps every layer in proportion along
   the config's schedule and ends on the plan.

The loss of pruning one layer is measured on a few training batches with batch-norm layers using
the batch's own statistics: fine-tuning re-learns the statistics a pruned layer shifts, so
eval-mode running statistics would blame the early layers for a shift fine-tuning undoes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpuprune.data import ImageData, train_loader
from gpuprune.errors import UserError
from gpuprune.experiment.config import ExperimentConfig
from gpuprune.gemm import weight_shaped
from gpuprune.train.layout import inference_layout

MATCHED = "latency"  # the allocation of a matched cell, and the suffix of its name
Evaluate = Callable[[str | None, torch.Tensor | None], float]


def matched_methods(cfg: ExperimentConfig) -> list[str]:
    """Methods to re-prune at the reference latency (none without a reference)."""
    return list(cfg.equal_latency.methods) if cfg.equal_latency.reference else []


def latency_backend(cfg: ExperimentConfig) -> str:
    """Whose curves set the budget: the section's backend, else the first timed backend."""
    eq = cfg.equal_latency
    return eq.backend or (cfg.latency.backends[0] if cfg.latency.backends else "analytical")


def check_equal_latency(cfg: ExperimentConfig) -> None:
    """Refuse, before any training, a reference that is not a cell or names that do not resolve."""
    eq = cfg.equal_latency
    if eq.methods and eq.reference is None:
        raise UserError(
            "equal_latency.methods needs equal_latency.reference",
            "name the uniform cell to match, e.g. reference: tile@0.75",
        )
    ref = eq.reference_cell
    if ref is None:
        return
    method, sparsity = ref
    if (method, sparsity) not in cfg.prune.grid():
        raise UserError(
            f"equal_latency.reference {eq.reference} is not a cell of this config",
            "use a grid cell (prune.methods at their sparsities), e.g. tile@0.75",
        )
    from gpuprune.prune import METHODS

    for m in eq.methods:
        METHODS.get(m)
    backend = latency_backend(cfg)
    if backend != "analytical":
        from gpuprune.nn import resolve_backend

        resolve_backend(backend)


def sensitivity_batches(cfg: ExperimentConfig, data: ImageData) -> list[tuple[torch.Tensor, ...]]:
    """A few un-augmented training batches for the loss estimates (the test set stays unseen)."""
    n = cfg.equal_latency.sensitivity_batches
    loader = train_loader(data, cfg.finetune.batch_size, seed=cfg.seed + 7, augment=False)
    return list(itertools.islice(iter(loader), n))


def batch_stat_evaluator(model: nn.Module, modules: dict[str, nn.Module],
                         batches: list[tuple[torch.Tensor, ...]]) -> Evaluate:  # fmt: skip
    """``evaluate(layer, mask)``: mean loss with that layer masked, batch norm on batch stats.

    Nothing of the model changes: the weight is restored and the running statistics are frozen
    (momentum 0) while batch norm runs in training mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @torch.no_grad()
    def evaluate(name: str | None, mask: torch.Tensor | None) -> float:
        weight = modules[name].weight if name is not None else None
        saved = weight.detach().clone() if weight is not None else None
        if weight is not None:
            weight.mul_(weight_shaped(mask, weight.shape).to(weight))
        was_training = model.training
        state = [(bn, bn.momentum, bn.num_batches_tracked.clone()) for bn in norms]
        model.eval()
        for bn in norms:
            bn.train()
            bn.momentum = 0.0
        try:
            losses = [float(F.cross_entropy(model(x), y)) for x, y in batches]
        finally:
            for bn, momentum, tracked in state:
                bn.momentum = momentum
                bn.num_batches_tracked.copy_(tracked)
            model.train(was_training)
            if weight is not None:
                weight.copy_(saved)
        return sum(losses) / len(losses)

    return evaluate


def _modelled_ms(pruner: Any, importances: dict[str, torch.Tensor], sparsity: float,
                 geoms: dict[str, Any], lm: Any) -> dict[str, float]:  # fmt: skip
    """Per prunable layer, the latency ``lm`` models for ``pruner``'s method uniformly at
    ``sparsity`` (layers the method leaves dense, at their dense latency)."""
    from gpuprune.gemm import block_reduce
    from gpuprune.kernels.format import block_for

    block = block_for(lm.target, lm.variant)
    out = {}
    for name, geom in geoms.items():
        kept = 1.0
        if name in pruner.specs and sparsity > 0:
            mask = pruner.method.mask(importances[name], sparsity, pruner.specs[name])
            kept = float(block_reduce(mask, block, "any").float().mean())
        out[name] = float(lm.curve(geom)(kept))
    return out


def plan_matched(cfg: ExperimentConfig, model: nn.Module, pruner: Any, data: ImageData,
                 layers: list[str]) -> dict[str, Any]:  # fmt: skip
    """The matched cell's plan: ``{"plan": {layer: sparsity}, ...numbers}`` (module docstring).

    ``pruner`` is the cell's pruner (its method, target and layers), not applied yet.

    Raises:
        BudgetError: the method cannot reach the reference latency on this backend (e.g.
            unstructured zeros rarely empty a whole tile).
    """
    import gpuprune.prune as gp
    from gpuprune.latency import LatencyModel, model_geometries, plan_latency

    eq, p = cfg.equal_latency, cfg.prune
    ref_method, ref_sparsity = eq.reference_cell  # type: ignore[misc]
    backend, batch = latency_backend(cfg), cfg.latency.batch_size
    ref = gp.Pruner(
        model, ref_method, target=p.target, importance=p.importance, exclude=p.exclude,
        exclude_first_last=p.exclude_first_last, skip_small=p.skip_small,
        input_size=(data.in_channels, *data.image_size), method_options=p.method_options.get(
            ref_method),
    )  # fmt: skip
    models: dict[str, LatencyModel] = {}  # per kernel variant: each curve measured once

    def model_of(method: Any) -> LatencyModel:
        variant = method.kernel
        if variant not in models:
            models[variant] = LatencyModel(backend, p.target, variant)
        return models[variant]

    batches = sensitivity_batches(cfg, data)
    geoms = model_geometries(model, batch, (data.in_channels, *data.image_size), names=layers)
    ref_ms = _modelled_ms(ref, ref.importances(batches), ref_sparsity, geoms, model_of(ref.method))
    own = pruner.importances(batches)
    dense_ms = _modelled_ms(pruner, own, 0.0, geoms, model_of(pruner.method))
    fixed = sum(ms for n, ms in dense_ms.items() if n not in pruner.specs)  # left dense
    budget = sum(ref_ms.values()) - fixed
    evaluate = (
        batch_stat_evaluator(model, {n: s.module for n, s in pruner.specs.items()}, batches)
        if batches
        else None
    )
    with inference_layout(model):  # once for every loss the search evaluates
        plan = plan_latency(
            ref_sparsity, pruner.specs, own, pruner.method, evaluate, latency_budget_ms=budget,
            latency_batch=batch, latency_model=model_of(pruner.method), geometries=geoms,
        )  # fmt: skip
    return {
        "plan": {n: float(s) for n, s in plan.sparsities.items()},
        "reference": eq.reference,
        "backend": backend,
        "batch_size": batch,
        "reference_ms": sum(ref_ms.values()),
        "modelled_ms": plan.latency_ms + fixed,
        "dense_ms": sum(dense_ms.values()),
        "estimated_loss": plan.loss,
        "loss_estimate": "training-batch loss, batch statistics" if evaluate else "proxy",
        "overall_sparsity": gp.allocation.plan_sparsity(plan.sparsities, pruner.specs),
    }
