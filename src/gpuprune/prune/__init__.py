"""Pruning: GPU tile and SIMD-vector pruning, the baselines, importance, allocation, schedules.

Methods (``METHODS``; names are the CLI values): ``tile``, ``simd``, ``simd-balanced`` (blocks
from a :class:`~gpuprune.arch.Target`), ``unstructured``, ``filter``, ``ssl``, ``balanced``,
``channel-perf``, ``nm``. Masks are ``torch.nn.utils.parametrize`` parametrizations of ``weight``.

One shot::

    import gpuprune.prune as gp
    result = gp.prune(model, method="tile", sparsity=0.75, target="nvidia")
    print(gp.sparsity_report(model))
    gp.save_pruned("vgg16-tile.safetensors", model, result, model_name=ModelSpec("vgg16"))
    model, plan, info = gp.load("vgg16-tile.safetensors")   # rebuilt, checked, plan attached
    gp.load_pruned("vgg16-tile.safetensors", fresh_model)   # or into a model you built
    gp.finalize(model)   # bake zeros in, drop parametrizations (outputs unchanged)

In a training loop (the stable API)::

    pruner = gp.Pruner(model, "simd", target="nvidia", importance="magnitude",
                       allocation="uniform", exclude=(), exclude_first_last=True)
    schedule = gp.AGP(start_step=0, end_step=None, frequency=100)   # or OneShot(), Iterative(4)
    for step in range(total_steps):
        if schedule.should_apply(step, total_steps):
            pruner.apply(schedule.sparsity_at(step, total_steps, 0.75), data=few_batches)
        loss = loss_fn(model(x), y)            # + strength * gp.ssl_penalty(model) for SSL
        loss.backward(); opt.step()            # masks are buffers: steps never change them
    result = pruner.result()   # PruneResult: per-layer sparsity, block counts, FLOPs kept
    pruner.masks               # {layer: bool keep-mask, weight-shaped}
    result.plan                # PrunePlan: per layer pattern, kernel, tiling, geometry (also
                               # model.gpuprune_plan; gpuprune.compile(model) reads it)

``Pruner.apply(sparsity, data=None, loss_fn=None)``: ``data`` is an iterable of ``(x, y)`` batches,
used by ``taylor`` importance and ``sensitivity`` allocation; ``loss_fn`` defaults to
cross-entropy. ``exclude_first_last`` defaults to True. Allocations: ``uniform``, ``global``,
``sensitivity`` or ``{layer: sparsity}``. Importances: ``magnitude``, ``l2``, ``taylor``,
``random``, ``obs`` (block Optimal Brain Surgeon: chooses the blocks by layer output error on
``data`` and re-fits the kept weights; ``reconstruct=True`` re-fits after any importance).
``recalibrate_bn(model, data, batches)`` re-estimates batch-norm statistics after one-shot
pruning. ``pruner.permute(sparsity)`` (before the first ``apply``; ``prune(...,
permute=True)``) reorders channels so the method's blocks gather important weights, the
function unchanged (:mod:`gpuprune.prune.permute`). Bad input raises
:class:`~gpuprune.errors.UserError`.

The package object itself is callable: ``gpuprune.prune(model, ...)`` is :func:`prune`.
"""

from __future__ import annotations

import sys
import types

from gpuprune.prune.allocation import ALLOCATIONS, allocate
from gpuprune.prune.api import Pruner, prune, sparsity_report
from gpuprune.prune.calibrate import recalibrate_bn
from gpuprune.prune.files import Loaded, PrunedInfo, load, load_pruned, read_pruned, save_pruned
from gpuprune.prune.importance import IMPORTANCES, Importance
from gpuprune.prune.layers import LayerSpec
from gpuprune.prune.masks import WeightMask, finalize, get_mask, masked_layers, set_mask
from gpuprune.prune.methods import METHODS, PruneMethod, get_method, kernel_of
from gpuprune.prune.result import LayerResult, PruneResult
from gpuprune.prune.schedules import AGP, SCHEDULES, Iterative, OneShot, get_schedule
from gpuprune.prune.ssl import ssl_penalty

__all__ = [
    "AGP",
    "ALLOCATIONS",
    "IMPORTANCES",
    "METHODS",
    "SCHEDULES",
    "Importance",
    "Iterative",
    "LayerResult",
    "LayerSpec",
    "Loaded",
    "OneShot",
    "PruneMethod",
    "PruneResult",
    "PrunedInfo",
    "Pruner",
    "WeightMask",
    "allocate",
    "finalize",
    "get_mask",
    "get_method",
    "get_schedule",
    "kernel_of",
    "load",
    "load_pruned",
    "masked_layers",
    "prune",
    "read_pruned",
    "recalibrate_bn",
    "save_pruned",
    "set_mask",
    "sparsity_report",
    "ssl_penalty",
]


class _CallableModule(types.ModuleType):
    # `gpuprune.prune` is both this package and, as the project's API promises, the function.
    def __call__(self, *args, **kwargs):
        return prune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
