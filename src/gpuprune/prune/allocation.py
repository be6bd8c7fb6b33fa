"""Per-layer sparsity allocation: how an overall sparsity is shared among the layers.

* ``uniform``: every layer gets the overall sparsity.
* ``global``: one threshold on block scores across all layers. Scores are means per real element
  of each method's block, so layers with different block sizes (or ragged edges) are comparable.
* ``sensitivity``: prune each layer alone at a few sparsities, measure the loss on held-out
  batches, then find one loss-increase threshold so the layers' sparsities meet the overall one.
* ``plan``: a fixed ``{layer: sparsity}`` plan (e.g. one the latency allocation chose) reached
  gradually: at overall sparsity s each layer gets its planned sparsity times s / (the plan's
  overall sparsity), so a schedule ramps every layer in proportion and ends on the plan.
* a ``{layer: sparsity}`` mapping: explicit; unlisted layers get the overall sparsity.

Sparsity is always a fraction of weights (elements), weighted by layer size when averaged.
An allocator is called with keywords: ``sparsity``, ``specs``, ``importances``, ``method``,
``evaluate``, ``progress``, the pruner's ``allocation_options``, and ``model`` (the model being
pruned) when it takes that keyword or ``**kwargs``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping

import numpy as np
import torch

from gpuprune.errors import UserError
from gpuprune.prune.layers import LayerSpec
from gpuprune.prune.methods import PruneMethod, block_scores, real_sizes
from gpuprune.registry import Registry

# (layer, its [M, K] keep-mask) -> held-out loss; (None, None) -> the loss as the model is now
Evaluate = Callable[[str | None, torch.Tensor | None], float]
Allocator = Callable[..., dict[str, float]]

ALLOCATIONS: Registry[Allocator] = Registry("allocation")
SENSITIVITY_GRID = (0.25, 0.5, 0.7, 0.85, 0.95)  # sparsities probed per layer


@ALLOCATIONS.register("uniform")
def uniform(sparsity: float, specs: dict[str, LayerSpec], **_) -> dict[str, float]:
    return dict.fromkeys(specs, sparsity)


@ALLOCATIONS.register("plan")
def planned(
    sparsity: float, specs: dict[str, LayerSpec], plan: Mapping[str, float] | None = None, **_
) -> dict[str, float]:
    """The ``plan`` allocation: ``plan`` scaled to the overall ``sparsity`` (module docstring)."""
    if plan is None:
        raise UserError("allocation 'plan' needs a plan", "pass allocation_options={'plan': {...}}")
    unknown = sorted(set(plan) - set(specs))
    if unknown:
        raise UserError(
            f"plan names layer {unknown[0]!r}, which is not pruned",
            f"use one of: {', '.join(list(specs)[:6])}",
        )
    full = {n: check_sparsity(plan.get(n, 0.0), f"planned sparsity of layer {n}") for n in specs}
    final = plan_sparsity(full, specs)
    scale = 1.0 if final <= 0 else min(1.0, sparsity / final)
    return {n: s * scale for n, s in full.items()}


def plan_sparsity(plan: Mapping[str, float], specs: dict[str, LayerSpec]) -> float:
    """The overall sparsity of a per-layer plan (weighted by layer size)."""
    total = sum(s.numel for s in specs.values())
    return sum(plan.get(n, 0.0) * s.numel for n, s in specs.items()) / total if total else 0.0


@ALLOCATIONS.register("global")
def global_threshold(
    sparsity: float,
    specs: dict[str, LayerSpec],
    importances: dict[str, torch.Tensor],
    method: PruneMethod,
    **_,
) -> dict[str, float]:
    """Prune the lowest-scoring blocks of the whole model until ``sparsity`` of weights is hit."""
    scores, sizes, owner = [], [], []
    for i, (name, spec) in enumerate(specs.items()):
        block = method.unit(spec)
        score = block_scores(importances[name], block).flatten()
        score[torch.argmax(score)] = float("inf")  # masks keep >= 1 unit per layer: never pool it
        scores.append(score)
        sizes.append(real_sizes(spec.shape, block).flatten())
        owner.append(torch.full_like(sizes[-1], i))
    score, size, who = torch.cat(scores), torch.cat(sizes), torch.cat(owner)
    order = torch.argsort(score, stable=True)
    cum = torch.cat([size.new_zeros(1), size[order].cumsum(0)])
    cum = cum[: int(torch.isfinite(score).sum()) + 1]
    j = int(torch.argmin((cum - sparsity * size.sum()).abs()))
    pruned = torch.zeros(len(specs), dtype=torch.float64).index_add_(
        0, who[order[:j]].long(), size[order[:j]]
    )
    return {n: float(pruned[i]) / s.numel for i, (n, s) in enumerate(specs.items())}


@ALLOCATIONS.register("sensitivity")
def sensitivity(
    sparsity: float,
    specs: dict[str, LayerSpec],
    importances: dict[str, torch.Tensor],
    method: PruneMethod,
    evaluate: Evaluate | None = None,
    grid: tuple[float, ...] = SENSITIVITY_GRID,
    progress: Callable[[int, int, str], None] | None = None,
    **_,
) -> dict[str, float]:
    """Per-layer sparsities from loss-sensitivity curves (see module docstring)."""
    if evaluate is None:
        raise UserError(
            "sensitivity allocation needs held-out data",
            "pass data=[(x, y), ...] to apply()/prune()",
        )
    points = sorted({0.0, *grid, sparsity})
    base = evaluate(None, None)
    curves, done, total = {}, 0, len(specs) * (len(points) - 1)
    for name, spec in specs.items():
        losses = [0.0]
        for s in points[1:]:
            losses.append(max(0.0, evaluate(name, method.mask(importances[name], s, spec)) - base))
            done += 1
            if progress:
                progress(done, total, name)
        curves[name] = np.maximum.accumulate(np.asarray(losses))  # more pruning never "helps"
    # a tiny slope breaks ties between flat curves, so equally insensitive layers share the pruning
    eps = 1e-9 * (1.0 + max(float(c[-1]) for c in curves.values()))
    curves = {n: c + eps * np.asarray(points) for n, c in curves.items()}
    return solve_threshold(
        sparsity, {n: s.numel for n, s in specs.items()}, np.asarray(points), curves
    )


def solve_threshold(
    sparsity: float, numels: dict[str, int], points: np.ndarray, curves: dict[str, np.ndarray]
) -> dict[str, float]:
    """Bisect one loss-increase threshold so the size-weighted mean sparsity equals ``sparsity``.

    Each layer takes the largest sparsity whose (linearly interpolated) loss increase stays under
    the threshold.
    """

    def at(tau: float) -> dict[str, float]:
        out = {}
        for name, d in curves.items():
            above = np.nonzero(d > tau)[0]
            if not above.size:
                out[name] = float(points[-1])
                continue
            i = int(above[0])
            frac = (tau - d[i - 1]) / (d[i] - d[i - 1])
            out[name] = float(points[i - 1] + frac * (points[i] - points[i - 1]))
        return out

    total = sum(numels.values())

    def mean(alloc: dict[str, float]) -> float:
        return sum(alloc[n] * numels[n] for n in alloc) / total

    lo, hi = 0.0, float(max(d[-1] for d in curves.values())) + 1e-12
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(at(mid)) < sparsity else (lo, mid)
    return at(hi)


def allocate(
    allocation: str | Mapping[str, float], sparsity: float, specs: dict[str, LayerSpec], **kwargs
) -> dict[str, float]:
    """Per-layer sparsities for ``allocation`` (a registered name or an explicit mapping)."""
    if isinstance(allocation, Mapping):
        unknown = sorted(set(allocation) - set(specs))
        if unknown:
            raise UserError(
                f"allocation names layer {unknown[0]!r}, which is not pruned",
                f"use one of: {', '.join(list(specs)[:6])}",
            )
        for name, s in allocation.items():
            check_sparsity(s, f"sparsity of layer {name}")
        return {n: float(allocation.get(n, sparsity)) for n in specs}
    fn = get_allocation(allocation)
    if "model" in kwargs and not _takes(fn, "model"):
        del kwargs["model"]  # added after allocators were registrable: theirs need not take it
    return fn(sparsity=sparsity, specs=specs, **kwargs)


def _takes(fn: Callable, name: str) -> bool:
    """Whether ``fn`` accepts the keyword ``name`` (by name or through ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


# Allocations living in packages above ``prune`` (they time kernels); imported on first use so
# ``prune`` never depends on them.
PLUGINS = {"latency": "gpuprune.latency.allocation"}


def get_allocation(name: str) -> Allocator:
    """The registered allocator ``name`` (loading a plugin package when needed)."""
    if name not in ALLOCATIONS and name in PLUGINS:
        importlib.import_module(PLUGINS[name])
    return ALLOCATIONS.get(name)


def allocation_names() -> list[str]:
    return list(dict.fromkeys([*ALLOCATIONS.names(), *PLUGINS]))


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """``value`` as a float in [0, 1), or a :class:`UserError`."""
    if isinstance(value, str | bool) or value is None:  # float("0.5") or True: surely a slip
        raise UserError(f"{what} must be a number, got {type(value).__name__} {value!r}",
                        "pass e.g. 0.75")  # fmt: skip
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}", "pass e.g. 0.75") from None
    if not 0.0 <= v < 1.0:
        raise UserError(
            f"{what} {v} is outside [0, 1)", "pass a fraction of weights to zero, e.g. 0.75"
        )
    return v
