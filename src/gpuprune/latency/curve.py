"""A layer's latency as a function of its kept fraction of blocks: measured points, interpolated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpuprune.errors import UserError


@dataclass(frozen=True)
class LatencyCurve:
    """Piecewise-linear latency (ms) over the kept fraction of blocks.

    Measurements are noisy, and pruning more never costs time with a skipping kernel, so the
    curve runs through the running maximum of the points taken in ascending kept order: it is
    non-decreasing in ``kept`` and exact at every measured point that is already monotone.
    Below the smallest point it extends the first segment's line (clamped at zero); above the
    largest it is flat.
    """

    kept: tuple[float, ...]  # ascending kept fractions in (0, 1]
    ms: tuple[float, ...]  # latency measured (or modelled) at each
    source: str = "measured"  # "measured", "cached" or "analytical"

    def __post_init__(self) -> None:
        if len(self.kept) != len(self.ms) or not self.kept:
            raise UserError("a latency curve needs as many latencies as kept fractions", "")
        if any(b <= a for a, b in zip(self.kept, self.kept[1:], strict=False)):
            raise UserError(f"kept fractions {self.kept} must be strictly ascending", "sort them")
        if not all(0.0 < k <= 1.0 for k in self.kept) or min(self.ms) < 0:
            raise UserError("kept fractions must lie in (0, 1] and latencies be >= 0", "")

    @classmethod
    def from_points(cls, points: dict[float, float], source: str = "measured") -> LatencyCurve:
        """A curve from ``{kept: ms}``."""
        kept = sorted(points)
        return cls(tuple(float(k) for k in kept), tuple(float(points[k]) for k in kept), source)

    @property
    def monotone_ms(self) -> np.ndarray:
        """The points' latencies made non-decreasing in kept fraction (running maximum)."""
        return np.maximum.accumulate(np.asarray(self.ms, dtype=np.float64))

    @property
    def dense_ms(self) -> float:
        """Latency with every block kept (or at the largest measured fraction)."""
        return float(self(1.0))

    def __call__(self, kept: float) -> float:
        """Interpolated latency (ms) at a kept fraction in [0, 1]."""
        x, y = np.asarray(self.kept), self.monotone_ms
        if kept >= x[0] or len(x) == 1:
            return float(np.interp(kept, x, y))
        slope = (y[1] - y[0]) / (x[1] - x[0])
        return float(max(y[0] - slope * (x[0] - kept), 0.0))

    def to_dict(self) -> dict:
        return {"kept": list(self.kept), "ms": list(self.ms), "source": self.source}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyCurve:
        return cls(tuple(data["kept"]), tuple(data["ms"]), data.get("source", "measured"))
