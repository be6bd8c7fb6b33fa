"""Tile/pattern co-design: per layer, the fastest valid tiling of a Target and its block shape.

The search space is CLBlast's XGEMM tuner space (kernel 0): MWG, NWG in {16, 32, 64, 128},
KWG in {16, 32}, MDIMC, NDIMC in {8, 16, 32}, VWM, VWN in {1, 2, 4}, filtered by the Target's
own validation (divisibility, work-group size, SIMD lane layout, local memory). The skip-GEMM
kernels read MWG, NWG, KWG, MDIMC and NDIMC; tilings that differ only in vector widths run the
same code, so they are one candidate (the widest valid vectors are kept).

A tiling fixes the pruning block (``tile_block()`` = MWG x KWG, ``simd_block()`` = R x simd_k),
so each candidate is measured on a weight pruned with its own block at the requested sparsity:
the pair (tiling, pattern) is chosen together. Per layer the preset plus a seeded random sample of
candidates is timed; the winner is then timed again against the preset, alternating, so the
reported speedup is not the lucky minimum of many noisy draws.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from gpuprune.arch import Target, get_target
from gpuprune.errors import TargetError, UserError
from gpuprune.kernels import get_backend
from gpuprune.latency.geometry import LayerGeometry
from gpuprune.latency.measure import Timer, measure_layer

SPACE: dict[str, tuple[int, ...]] = {
    "mwg": (16, 32, 64, 128),
    "nwg": (16, 32, 64, 128),
    "kwg": (16, 32),
    "mdimc": (8, 16, 32),
    "ndimc": (8, 16, 32),
    "vwm": (1, 2, 4),
    "vwn": (1, 2, 4),
}
KERNEL_FIELDS = ("mwg", "nwg", "kwg", "mdimc", "ndimc")  # what the skip kernels compile in
CONFIRM_ROUNDS = 3  # alternating re-timings of preset and winner

Measure = Callable[[LayerGeometry, Target, str, float], float]  # (layer, tiling, variant, kept)


def tiling_name(base: str, t: Target) -> str:
    return f"{base}@{t.mwg}x{t.nwg}x{t.kwg}/{t.mdimc}x{t.ndimc}"


def tilings(target: Target | str) -> list[Target]:
    """Every valid tiling of ``target`` in :data:`SPACE`, one per distinct kernel."""
    base = get_target(target)
    found: dict[tuple[int, ...], Target] = {}
    for values in itertools.product(*SPACE.values()):
        params = dict(zip(SPACE, values, strict=True))
        kernel = tuple(params[f] for f in KERNEL_FIELDS)
        old = found.get(kernel)
        if old is not None and old.vwm * old.vwn >= params["vwm"] * params["vwn"]:
            continue
        try:
            t = base.replace(**params, name=base.name)
        except TargetError:
            continue
        found[kernel] = t.replace(name=tiling_name(base.name, t))
    return list(found.values())


def candidates(target: Target | str, count: int = 8, seed: int = 0) -> list[Target]:
    """The preset first, then ``count`` tilings drawn at random (seeded) from the rest."""
    base = get_target(target)
    key = tuple(getattr(base, f) for f in KERNEL_FIELDS)
    rest = [t for t in tilings(base) if tuple(getattr(t, f) for f in KERNEL_FIELDS) != key]
    rng = random.Random(seed)
    return [base, *rng.sample(rest, min(max(count, 0), len(rest)))]


@dataclass(frozen=True)
class LayerChoice:
    """The co-design outcome for one layer."""

    layer: str
    geometry: LayerGeometry
    preset_ms: float
    best: Target
    best_ms: float
    speedup: float  # preset / best, from the confirmation re-timing
    tried: dict[str, float] = field(default_factory=dict)  # tiling name -> ms (first pass)
    failed: dict[str, str] = field(default_factory=dict)  # tiling name -> why it could not run

    def row(self) -> dict[str, Any]:
        g = self.geometry
        return {
            "layer": self.layer,
            "gemm": [g.m, g.k, g.n],
            "preset_ms": self.preset_ms,
            "best": self.best.name,
            "best_ms": self.best_ms,
            "speedup": self.speedup,
            "best_target": self.best.to_dict(),
            "tried": self.tried,
            "failed": self.failed,
        }


@dataclass(frozen=True)
class CodesignResult:
    """Per-layer choices; :meth:`targets` is what a pruned model's plan carries."""

    target: Target
    variant: str
    sparsity: float
    layers: tuple[LayerChoice, ...]

    def targets(self) -> dict[str, dict[str, Any]]:
        """``{layer: Target.to_dict()}`` of the chosen tilings."""
        return {c.layer: c.best.to_dict() for c in self.layers}

    def faster(self, threshold: float = 1.10) -> int:
        """How many layers' best tiling is at least ``threshold`` times faster than the preset."""
        return sum(c.speedup >= threshold for c in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.to_dict(),
            "variant": self.variant,
            "sparsity": self.sparsity,
            "layers": [c.row() for c in self.layers],
            "faster_10pct": self.faster(1.10),
            "total_layers": len(self.layers),
        }


def backend_measure(backend: str = "opencl", timer: Timer | None = None) -> Measure:
    """A :data:`Measure` that times layers on a kernel backend (which must be available)."""
    be = get_backend(backend)
    be.check_available()

    def measure(geom: LayerGeometry, target: Target, variant: str, kept: float) -> float:
        return measure_layer(be, geom, target, variant, kept, timer)

    return measure


def codesign_layer(
    geom: LayerGeometry,
    cands: list[Target],
    measure: Measure,
    variant: str = "tile",
    sparsity: float = 0.75,
    progress: Callable[[str], None] | None = None,
) -> LayerChoice:
    """Time ``cands`` (the first is the preset) on one layer and keep the fastest."""
    kept = 1.0 - sparsity
    tried: dict[str, float] = {}
    failed: dict[str, str] = {}
    for t in cands:
        if progress:
            progress(f"{geom.name} {t.name}")
        try:
            tried[t.name] = measure(geom, t, variant, kept)
        except UserError as err:  # e.g. the device lacks the work-group size or local memory
            failed[t.name] = err.problem
    preset = cands[0]
    if preset.name not in tried:
        raise UserError(
            f"layer {geom.name}: the preset tiling {preset.name!r} cannot run "
            f"({failed.get(preset.name)})",
            "choose a target that fits the device",
        )
    by_name = {t.name: t for t in cands}
    best = by_name[min(tried, key=tried.get)]
    preset_ms, best_ms = tried[preset.name], tried[best.name]
    if best is not preset:
        p_ms, b_ms = [], []  # fresh draws only: the first pass's minimum is biased low
        for _ in range(CONFIRM_ROUNDS):
            p_ms.append(measure(geom, preset, variant, kept))
            b_ms.append(measure(geom, best, variant, kept))
        preset_ms, best_ms = min(p_ms), min(b_ms)
        if best_ms >= preset_ms:
            best, best_ms = preset, preset_ms
    return LayerChoice(
        geom.name, geom, preset_ms, best, best_ms, preset_ms / best_ms, tried, failed
    )


def codesign(
    geoms: dict[str, LayerGeometry],
    target: Target | str,
    backend: str = "opencl",
    count: int = 8,
    seed: int = 0,
    variant: str = "tile",
    sparsity: float = 0.75,
    measure: Measure | None = None,
    progress: Callable[[str], None] | None = None,
) -> CodesignResult:
    """Per layer, the fastest of the preset and ``count`` sampled tilings of ``target``.

    Args:
        geoms: the layers (e.g. :func:`~gpuprune.latency.geometry.model_geometries`).
        target: the Target whose tiling space is searched (its SIMD width, limits and vendor
            stay fixed).
        backend: kernel backend that runs the layers (ignored when ``measure`` is given).
        count: tilings sampled besides the preset; the same sample serves every layer, so each
            kernel is compiled once.
        variant: "tile" or "simd" (which block each tiling prunes and skips); "dense" times the
            tilings unpruned.
        sparsity: fraction of each candidate's blocks pruned in the timed weight.
        measure: ``measure(geom, tiling, variant, kept) -> ms``; default times ``backend``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity {sparsity} is outside [0, 1)", "pass e.g. 0.75")
    base = get_target(target)
    cands = candidates(base, count, seed)
    measure = measure or backend_measure(backend)
    layers = tuple(
        codesign_layer(g, cands, measure, variant, sparsity, progress) for g in geoms.values()
    )
    return CodesignResult(base, variant, sparsity, layers)


def use_layer_targets(pruner: Any, targets: dict[str, dict[str, Any] | Target]) -> None:
    """Make a :class:`~gpuprune.prune.Pruner` prune each named layer with its own tiling.

    ``targets`` is :meth:`CodesignResult.targets` (or ``{layer: Target}``); the next
    ``pruner.apply()`` builds tile/SIMD masks from each layer's block. Layers not named keep the
    pruner's target.

    Raises:
        UserError: a name is not one of the pruner's layers.
    """
    for name, t in targets.items():
        if name not in pruner.specs:
            raise UserError(
                f"layer {name!r} is not pruned by this pruner",
                f"use one of: {', '.join(list(pruner.specs)[:6])}",
            )
        tgt = get_target(t, origin=f"target of {name}")
        pruner.specs[name] = replace(pruner.specs[name], target=tgt)
