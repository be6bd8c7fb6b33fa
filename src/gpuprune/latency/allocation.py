"""Latency-aware allocation: per-layer sparsities with the least estimated loss within a budget.

Registered as ``allocation="latency"`` in :data:`gpuprune.prune.allocation.ALLOCATIONS`.
For every layer and every sparsity of a grid it builds the method's real mask, and estimates

* the layer's latency: the kept fraction of the kernel variant's blocks (``tile`` or ``simd``
  on the target; a baseline's mask is counted in tile blocks, so unstructured pruning saves
  almost nothing) read off the layer's :class:`~gpuprune.latency.model.LatencyModel` curve;
* the loss increase: held-out loss with that layer alone pruned to that sparsity, as the
  ``sensitivity`` allocation measures it; without data, a proxy: the share of the layer's
  importance mass the mask removes, times the layer's share of the weights.

:func:`~gpuprune.latency.solver.solve` then picks one sparsity per layer. The budget is
``latency_budget`` (a fraction of the pruned layers' dense latency) or, without one, the
overall ``sparsity`` (a fraction of the pruned layers' weights).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from gpuprune.arch import Target, get_target
from gpuprune.errors import UserError
from gpuprune.gemm import block_reduce
from gpuprune.kernels.format import block_for
from gpuprune.latency.geometry import LayerGeometry, fused_pools, geometry_of
from gpuprune.latency.model import ANALYTICAL, LatencyModel
from gpuprune.latency.solver import BudgetError, Option, solve, total_of
from gpuprune.prune.allocation import ALLOCATIONS, Evaluate
from gpuprune.prune.layers import LayerSpec
from gpuprune.prune.methods import PruneMethod

LATENCY_GRID = (0.25, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375)  # sparsities probed per layer


@dataclass(frozen=True)
class LatencyPlan:
    """The allocation and what the models expect of it."""

    sparsities: dict[str, float]
    latency_ms: float  # estimated latency of the pruned layers
    dense_ms: float  # their dense latency
    loss: float  # estimated loss increase (sum over layers)
    options: dict[str, list[Option]]  # per layer (sparsity, latency ms, loss) grid


def _loss_fn(evaluate: Evaluate | None, importances: dict[str, torch.Tensor], total: int):
    if evaluate is not None:
        base = evaluate(None, None)
        return lambda name, mask: max(0.0, evaluate(name, mask) - base)

    def proxy(name: str, mask: torch.Tensor) -> float:
        imp = importances[name].double().abs()
        removed = float(imp[~mask].sum() / imp.sum().clamp_min(1e-30))
        return removed * mask.numel() / total

    return proxy


def _target(specs: dict[str, LayerSpec], target: Target | str | None) -> Target:
    if target is not None:
        return get_target(target)
    for spec in specs.values():
        if spec.target is not None:
            return spec.target
    raise UserError(
        "latency allocation needs a GPU target to model the kernels",
        "pass target= to the pruner, or latency_target='cpu-pocl' (see `gpuprune targets`)",
    )


def plan_latency(
    sparsity: float,
    specs: dict[str, LayerSpec],
    importances: dict[str, torch.Tensor],
    method: PruneMethod,
    evaluate: Evaluate | None = None,
    latency_budget: float | None = None,
    latency_budget_ms: float | None = None,
    latency_backend: str = ANALYTICAL,
    latency_target: Target | str | None = None,
    latency_batch: int = 1,
    latency_model: LatencyModel | None = None,
    grid: tuple[float, ...] = LATENCY_GRID,
    progress: Callable[[int, int, str], None] | None = None,
    geometries: Mapping[str, LayerGeometry] | None = None,
) -> LatencyPlan:
    """Per-layer sparsities minimising the estimated loss within the budget (module docstring).

    Args:
        sparsity: overall sparsity, the budget when ``latency_budget`` is None.
        latency_budget: latency of the pruned layers as a fraction of dense, in (0, 1].
        latency_budget_ms: the same budget in modelled milliseconds (e.g. another plan's
            latency, to compare methods at equal latency); overrides ``latency_budget``.
        latency_backend: backend whose measured curves are used, or "analytical".
        latency_target: target of the latency model (default: the pruner's target).
        latency_batch: batch size the latency is modelled at.
        latency_model: a ready model (overrides backend and target).
        grid: sparsities tried per layer (0 is always added).
        geometries: each layer's geometry as compile() will run it (its fused max pool above
            all: :func:`~gpuprune.latency.geometry.model_geometries` or ``fused_pools``). A
            layer not in it is priced from its spec alone, without a pool; a budget priced on
            other geometries than the options would ask for another latency than it means.
    """
    if latency_budget is not None and not 0.0 < float(latency_budget) <= 1.0:
        raise UserError(
            f"latency budget {latency_budget} is outside (0, 1]",
            "pass a fraction of the dense latency, e.g. latency_budget=0.4",
        )
    if latency_budget_ms is not None:
        if not float(latency_budget_ms) > 0:
            raise UserError(
                f"latency budget {latency_budget_ms} ms is not positive", "pass a time in ms"
            )
        latency_budget = 1.0  # curves are needed; the budget itself is set below
    points = sorted({0.0, *(float(g) for g in grid)} | ({sparsity} if sparsity > 0 else set()))
    models: dict[Target, LatencyModel] = {}

    def model_for(spec: LayerSpec) -> LatencyModel:
        # one model per tiling: co-designed layers (use_layer_targets) carry their own target
        if latency_model is not None:
            return latency_model
        tgt = (
            get_target(latency_target) if latency_target else (spec.target or _target(specs, None))
        )
        if tgt not in models:
            models[tgt] = LatencyModel(latency_backend, tgt, method.kernel)
        return models[tgt]

    total = sum(s.numel for s in specs.values())
    # Costs first (masks only, cheap), losses after: an unreachable budget is refused before the
    # loss of any layer is measured (each measure runs the model on the sensitivity batches).
    masks: dict[str, list[torch.Tensor]] = {}
    costs: dict[str, list[float]] = {}
    for name, spec in specs.items():
        curve = block = None
        if latency_budget is not None:
            lm = model_for(spec)
            geom = (geometries or {}).get(name)
            geom = (geom.with_batch(latency_batch) if geom is not None
                    else geometry_of(name, spec.module, spec.in_hw, latency_batch))  # fmt: skip
            curve = lm.curve(geom)
            block = block_for(lm.target, lm.variant)
        masks[name], costs[name] = [], []
        for s in points:
            mask = (torch.ones(spec.shape, dtype=torch.bool) if s == 0.0
                    else method.mask(importances[name], s, spec))  # fmt: skip
            if curve is not None:
                cost = curve(float(block_reduce(mask, block, "any").float().mean()))
            else:
                cost = spec.numel * (1.0 - s)
            masks[name].append(mask)
            costs[name].append(cost)
    dense = sum(max(c) for c in costs.values())
    budget = latency_budget * dense if latency_budget is not None else (1 - sparsity) * total
    if latency_budget_ms is not None:
        budget = float(latency_budget_ms)
    check_reachable(costs, budget)
    loss_of = _loss_fn(evaluate, importances, total)
    options: dict[str, list[Option]] = {}
    done, steps = 0, len(specs) * len(points)
    for name in specs:
        opts, worst = [], 0.0
        for s, mask, cost in zip(points, masks[name], costs[name], strict=True):
            loss = 0.0 if s == 0.0 else loss_of(name, mask)
            worst = max(worst, loss)  # pruning more never helps: keep the curve monotone
            opts.append(Option(s, cost, worst + 1e-12 * s))  # tiny slope: ties prune evenly
            done += 1
            if progress:
                progress(done, steps, name)
        options[name] = opts
    choice = solve(options, budget)
    est = total_of(options, choice, "cost")
    return LatencyPlan(
        sparsities=choice,
        latency_ms=est if latency_budget is not None else float("nan"),
        dense_ms=dense if latency_budget is not None else float("nan"),
        loss=total_of(options, choice, "loss"),
        options=options,
    )


def check_reachable(costs: dict[str, list[float]], budget: float) -> None:
    """Raise :class:`BudgetError` when even the cheapest option of every layer is over
    ``budget`` (the solver's own refusal, made before any loss is measured)."""
    cheapest = sum(min(c) for c in costs.values() if c)
    if cheapest > budget + 1e-12 * max(abs(budget), 1.0):
        raise BudgetError(
            f"the budget {budget:.4g} is below the cheapest allocation ({cheapest:.4g})",
            "raise the budget (a latency budget is a fraction of the dense latency)",
        )


@ALLOCATIONS.register("latency")
def latency_allocation(
    sparsity: float,
    specs: dict[str, LayerSpec],
    importances: dict[str, torch.Tensor],
    method: PruneMethod,
    evaluate: Evaluate | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    model: torch.nn.Module | None = None,
    **options,
) -> dict[str, float]:
    """The ``latency`` allocation: :func:`plan_latency`'s sparsities (options pass through).

    With a latency budget the overall ``sparsity`` is not the budget, so a gradual schedule
    would get the final plan at its first step: solve once with :func:`plan_latency` and prune
    with ``allocation="plan"`` instead (what the experiment's latency-matched cells do).
    """
    known = set(inspect.signature(plan_latency).parameters) - {"geometries"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(
            f"latency allocation has no option {unknown[0]!r}",
            "use latency_budget, latency_budget_ms, latency_backend, latency_target, "
            "latency_batch or grid",
        )
    # the pools compile() will fuse into the convs' stores: their cost is part of the layer's
    pools = fused_pools(model) if model is not None else {}
    geometries = {n: geometry_of(n, s.module, s.in_hw, pool=pools[n])
                  for n, s in specs.items() if n in pools}  # fmt: skip
    plan = plan_latency(
        sparsity, specs, importances, method, evaluate, progress=progress,
        geometries=geometries, **options,
    )  # fmt: skip
    return {n: float(np.clip(s, 0.0, 0.999)) for n, s in plan.sparsities.items()}
