"""What a pruning pass did: per-layer sparsity, block counts and FLOPs kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gpuprune.arch import Target
from gpuprune.plan import PrunePlan, SkippedLayer


@dataclass(frozen=True)
class LayerResult:
    """One pruned layer."""

    name: str
    shape: tuple[int, int]  # (M, K) of the GEMM view
    block: tuple[int, int]  # the method's unit (rows, k)
    requested: float  # sparsity the allocation asked for
    sparsity: float  # achieved fraction of zero weights (mask)
    blocks_total: int  # blocks of `block` covering the layer, ragged edges included
    blocks_kept: int  # blocks with at least one kept weight
    flops_dense: int  # 2 * M * K * N for one sample
    flops_kept: int  # 2 * kept weights * N


@dataclass(frozen=True)
class PruneResult:
    """The outcome of :meth:`Pruner.apply` or :func:`prune`."""

    method: str
    target: Target | None
    importance: str
    allocation: str
    requested: float  # overall sparsity asked for
    layers: tuple[LayerResult, ...]
    skipped: tuple[SkippedLayer, ...] = field(default=())  # weight layers left dense, and why
    plan: PrunePlan | None = None  # per layer: pattern, kernel, tiling, geometry (the pruner's)
    permutation: dict[str, Any] | None = None  # Pruner.permute's summary, if channels moved

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over the pruned layers, weighted by layer size."""
        total = sum(lr.shape[0] * lr.shape[1] for lr in self.layers)
        return sum(lr.sparsity * lr.shape[0] * lr.shape[1] for lr in self.layers) / max(total, 1)

    @property
    def flops_kept(self) -> float:
        """Fraction of the pruned layers' FLOPs that remain."""
        return sum(lr.flops_kept for lr in self.layers) / max(
            sum(lr.flops_dense for lr in self.layers), 1
        )

    def layer_facts(self) -> dict[str, dict[str, Any]]:
        """``{layer: {shape, block, requested, sparsity, ...}}`` (JSON-ready)."""
        return {lr.name: {k: v for k, v in asdict(lr).items() if k != "name"} for lr in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target.to_dict() if self.target else None,
            "importance": self.importance,
            "allocation": self.allocation,
            "requested": self.requested,
            "sparsity": self.sparsity,
            "flops_kept": self.flops_kept,
            "layers": self.layer_facts(),
            "skipped": [s.to_dict() for s in self.skipped],
            "plan": self.plan.to_dict() if self.plan else None,
            "permutation": self.permutation,
        }

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(columns, rows) for printing."""
        cols = ["layer", "GEMM MxK", "block", "blocks kept", "sparsity", "FLOPs kept"]
        rows = [
            [
                lr.name,
                f"{lr.shape[0]}x{lr.shape[1]}",
                f"{lr.block[0]}x{lr.block[1]}",
                f"{lr.blocks_kept}/{lr.blocks_total}",
                f"{lr.sparsity:.3f}",
                f"{lr.flops_kept / max(lr.flops_dense, 1):.3f}",
            ]
            for lr in self.layers
        ]
        return cols, rows
