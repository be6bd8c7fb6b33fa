"""Latency-aware pruning: per-layer latency models, latency-budget allocation, tile co-design.

* :class:`LatencyModel` — per layer, backend and target, latency as a function of kept blocks
  (measured at a few points, interpolated, cached on disk; analytical fallback).
* ``allocation="latency"`` — registered in the pruning ALLOCATIONS on import of this package:
  per-layer sparsities with the least estimated loss within a latency (or sparsity) budget.
* :func:`codesign` — per layer, the fastest valid tiling of a Target (and its block pattern).
* :func:`cross_target` — a pruned model's skippable fraction and modelled speedup per preset.
"""

from gpuprune.latency import allocation as _allocation  # noqa: F401 - registers "latency"
from gpuprune.latency.allocation import LatencyPlan, plan_latency
from gpuprune.latency.analytical import THROUGHPUT, Throughput, analytical_ms
from gpuprune.latency.cache import LatencyCache
from gpuprune.latency.codesign import (
    CodesignResult,
    LayerChoice,
    candidates,
    codesign,
    tilings,
    use_layer_targets,
)
from gpuprune.latency.crosstarget import cross_target
from gpuprune.latency.curve import LatencyCurve
from gpuprune.latency.geometry import LayerGeometry, geometry_of, model_geometries
from gpuprune.latency.model import LatencyModel
from gpuprune.latency.solver import Option, solve

__all__ = [
    "THROUGHPUT",
    "CodesignResult",
    "LayerChoice",
    "candidates",
    "codesign",
    "cross_target",
    "tilings",
    "use_layer_targets",
    "LatencyCache",
    "LatencyCurve",
    "LatencyModel",
    "LatencyPlan",
    "LayerGeometry",
    "Option",
    "Throughput",
    "analytical_ms",
    "geometry_of",
    "model_geometries",
    "plan_latency",
    "solve",
]
