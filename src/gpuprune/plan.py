"""The pruning plan: what each pruned layer is, decided once by the pruner, read by all others.

For every pruned layer the plan records its block pattern (the pruning method and its unit), the
kernel variant that skips that pattern, the tiling the kernel is built for, the conv geometry and
the requested and achieved sparsity. The pruner writes it (``PruneResult.plan``, and
``model.gpuprune_plan``), :func:`gpuprune.save_pruned` stores it in the file header,
:func:`gpuprune.load` validates and returns it, and :func:`gpuprune.compile` builds each layer's
kernel from it. Nothing downstream re-derives a layer's kernel from the method's name.

This module depends only on :mod:`gpuprune.arch` and :mod:`gpuprune.geometry`, so the pruner, the
kernels and the compiler can all use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuprune.arch import Target, get_target
from gpuprune.errors import TargetError, UserError
from gpuprune.geometry import ConvGeometry

PLAN_VERSION = "gpuprune-plan/2"  # /2: skipped layers carry their reason
OLD_VERSIONS = ("gpuprune-plan/1",)  # read too: skipped names only
SKIP_KERNELS = ("tile", "simd")  # kernel variants that skip pruned blocks
KINDS = ("conv", "linear")
FIX = "save the model again with `gpuprune prune` or gpuprune.save_pruned()"


@dataclass(frozen=True)
class LayerPlan:
    """One pruned layer."""

    name: str  # qualified module name, as in model.named_modules()
    kind: str  # "conv" or "linear"
    gemm: tuple[int, int]  # (M, K) of the GEMM view
    method: str  # the pruning method (block pattern) that chose the mask
    block: tuple[int, int]  # the method's unit (rows, k)
    kernel: str  # the kernel variant that skips this pattern: "tile" or "simd"
    requested: float  # sparsity the allocation asked for
    sparsity: float  # achieved fraction of zero weights
    tiling: Target | None = None  # a per-layer tiling (co-design); None: the plan's target
    geometry: ConvGeometry | None = None  # conv layers the skip kernels can run

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "gemm": list(self.gemm),
            "method": self.method, "block": list(self.block), "kernel": self.kernel,
            "requested": self.requested, "sparsity": self.sparsity,
            "tiling": self.tiling.to_dict() if self.tiling else None,
            "geometry": self.geometry.to_dict() if self.geometry else None,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, origin: str = "plan") -> LayerPlan:
        """Inverse of :meth:`to_dict`, every field checked (one-line UserError naming it)."""
        keys = ("name", "kind", "gemm", "method", "block", "kernel", "requested", "sparsity",
                "tiling", "geometry")  # fmt: skip
        _keys(data, keys, origin)
        name = _str(data["name"], f"{origin} name")
        where = f"{origin} layer {name!r}"
        kind, kernel = data["kind"], data["kernel"]
        if kind not in KINDS:
            raise UserError(f"{where}: kind {kind!r} is not one of {KINDS}", FIX)
        if kernel not in SKIP_KERNELS:
            raise UserError(f"{where}: kernel {kernel!r} is not one of {SKIP_KERNELS}", FIX)
        gemm = _pos_pair(data["gemm"], f"{where} gemm")
        geometry = None
        if kind == "conv" and data["geometry"] is not None:  # None: no skip kernel runs it
            geometry = ConvGeometry.from_dict(data["geometry"], f"{where} geometry")
            if geometry.k != gemm[1]:
                raise UserError(
                    f"{where}: geometry gives K={geometry.k} but gemm says K={gemm[1]}", FIX
                )
        elif data["geometry"] is not None:
            raise UserError(f"{where}: a linear layer has no conv geometry", FIX)
        tiling = None
        if data["tiling"] is not None:
            try:
                tiling = get_target(_mapping(data["tiling"], f"{where} tiling"),
                                    origin=f"{where} tiling")  # fmt: skip
            except TargetError as err:
                raise UserError(err.problem, FIX) from None
        return cls(
            name=name, kind=kind, gemm=gemm, method=_str(data["method"], f"{where} method"),
            block=_pos_pair(data["block"], f"{where} block"), kernel=kernel,
            requested=_fraction(data["requested"], f"{where} requested"),
            sparsity=_fraction(data["sparsity"], f"{where} sparsity"),
            tiling=tiling, geometry=geometry,
        )  # fmt: skip


@dataclass(frozen=True)
class SkippedLayer:
    """A weight layer (or weight) left dense, and why: nothing is left out silently."""

    name: str  # module name, or "<module>.<parameter>" for a bare weight (MHA's in_proj_weight)
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Any, origin: str = "plan") -> SkippedLayer:
        if isinstance(data, str):  # gpuprune-plan/1 listed names of too-small layers only
            return cls(_str(data, f"{origin} skipped layer"), "smaller than one block")
        _keys(data, ("name", "reason"), f"{origin} skipped layer")
        return cls(_str(data["name"], f"{origin} skipped layer name"),
                   _str(data["reason"], f"{origin} skipped layer reason"))  # fmt: skip


@dataclass(frozen=True)
class PrunePlan:
    """Every pruned layer of a model, in module order, with the method and target they share."""

    method: str
    target: Target | None  # the target the blocks came from (None for target-free methods)
    layers: tuple[LayerPlan, ...]
    requested: float = 0.0  # overall sparsity asked for
    skipped: tuple[SkippedLayer, ...] = field(default=())  # weight layers left dense, and why
    version: str = PLAN_VERSION

    def __post_init__(self) -> None:
        names = [lay.name for lay in self.layers]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UserError(f"the plan lists layer {dup!r} twice", FIX)

    def __iter__(self) -> Iterator[LayerPlan]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, name: object) -> bool:
        return any(lay.name == name for lay in self.layers)

    def __getitem__(self, name: str) -> LayerPlan:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [lay.name for lay in self.layers]

    def tiling(self, name: str) -> Target | None:
        """The tiling layer ``name``'s kernel is built for: its own, else the plan's target."""
        return self[name].tiling or self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "method": self.method,
            "target": self.target.to_dict() if self.target else None,
            "requested": self.requested,
            "layers": [lay.to_dict() for lay in self.layers],
            "skipped": [s.to_dict() for s in self.skipped],
        }

    @classmethod
    def from_dict(cls, data: Any, origin: str = "plan") -> PrunePlan:
        """Inverse of :meth:`to_dict`.

        Raises:
            UserError: another version, a missing or unknown key, or a bad value (one line).
        """
        _keys(data, ("version", "method", "target", "requested", "layers", "skipped"), origin)
        if data["version"] != PLAN_VERSION and data["version"] not in OLD_VERSIONS:
            raise UserError(
                f"{origin} has version {data['version']!r}, this gpuprune reads {PLAN_VERSION!r}",
                FIX,
            )
        target = None
        if data["target"] is not None:
            try:
                target = get_target(_mapping(data["target"], f"{origin} target"),
                                    origin=f"{origin} target")  # fmt: skip
            except TargetError as err:
                raise UserError(err.problem, FIX) from None
        layers, skipped = data["layers"], data["skipped"]
        if not isinstance(layers, list) or not isinstance(skipped, list):
            raise UserError(f"{origin}: layers and skipped must be lists", FIX)
        return cls(
            method=_str(data["method"], f"{origin} method"),
            target=target,
            layers=tuple(LayerPlan.from_dict(lay, origin) for lay in layers),
            requested=_fraction(data["requested"], f"{origin} requested"),
            skipped=tuple(SkippedLayer.from_dict(s, origin) for s in skipped),
        )


# ---- checks of plain data ---------------------------------------------------------------------
def _keys(data: Any, keys: tuple[str, ...], origin: str) -> None:
    if not isinstance(data, Mapping):
        raise UserError(f"{origin} is a {type(data).__name__}, not a mapping", FIX)
    missing = [k for k in keys if k not in data]
    unknown = sorted(str(k) for k in data if k not in keys)
    if missing or unknown:
        what = f"lacks {missing[0]!r}" if missing else f"has an unknown key {unknown[0]!r}"
        raise UserError(f"{origin} {what}", FIX)


def _mapping(value: Any, what: str) -> Mapping:
    if not isinstance(value, Mapping):  # a string here would be looked up as a preset name
        raise UserError(f"{what} is a {type(value).__name__}, not a mapping of target fields", FIX)
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"{what} {value!r} is not a name", FIX)
    return value


def _pos_pair(value: Any, what: str) -> tuple[int, int]:
    ok = isinstance(value, list | tuple) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    )
    if not ok:
        raise UserError(f"{what} {value!r} is not a pair of positive integers", FIX)
    return (int(value[0]), int(value[1]))


def _fraction(value: Any, what: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"{what} {value!r} is not a fraction in [0, 1]", FIX)
    return float(value)


__all__ = ["KINDS", "PLAN_VERSION", "SKIP_KERNELS", "LayerPlan", "PrunePlan", "SkippedLayer"]
