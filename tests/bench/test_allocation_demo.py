"""benchmarks/allocation_demo.py: its grid spec, and the gaps and equal-latency readings."""

from __future__ import annotations

import pytest

from script_helpers import load_script


def _module():
    return load_script("benchmarks/allocation_demo.py", "allocation_demo")


def _row(alloc: str, method: str, sparsity: float, acc: float, lat: float, seed: int = 0) -> dict:
    return {"allocation": alloc, "method": method, "sparsity": sparsity, "seed": seed,
            "status": "trained", "accuracy": acc, "latency_x_dense": lat}  # fmt: skip


def test_grid_spec() -> None:
    assert _module()._grid("uniform:tile=0.5/0.75,global:simd=0.9") == [
        ("uniform", "tile", 0.5), ("uniform", "tile", 0.75), ("global", "simd", 0.9)]


def test_gaps_and_accuracy_at_the_reference_latency() -> None:
    rows = [_row("uniform", "tile", 0.5, 0.89, 0.85), _row("uniform", "tile", 0.75, 0.85, 0.73),
            _row("uniform", "unstructured", 0.75, 0.90, 0.98),
            _row("global", "tile", 0.75, 0.895, 0.84), _row("global", "tile", 0.9, 0.10, 0.72),
            _row("global", "unstructured", 0.75, 0.905, 0.98),
            _row("global", "simd", 0.75, 0.90, 0.86)]  # fmt: skip
    out = _module().summarise(rows, ("tile", 0.75))["0"]
    assert out["gap_to_unstructured_pt"] == {"uniform/tile@0.75": 5.0, "global/tile@0.75": 1.0,
                                             "global/simd@0.75": 0.5}  # fmt: skip
    assert out["reference_latency_x_dense"] == 0.73
    at = out["accuracy_at_reference_latency"]
    assert at["uniform/tile"] == pytest.approx(0.85)  # the reference itself
    # between global tile@0.9 (0.72x) and @0.75 (0.84x): interpolated, collapse included
    assert at["global/tile"] == pytest.approx(0.10 + (0.73 - 0.72) / 0.12 * 0.795, abs=1e-4)
    assert at["global/simd"] is None  # one cell, slower than the reference: not extrapolated
