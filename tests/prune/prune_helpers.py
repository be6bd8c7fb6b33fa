"""Helpers shared by the pruning tests (imported by name: tests are not a package)."""

from __future__ import annotations

from gpuprune.arch import Target
from gpuprune.prune.layers import LayerSpec

# A valid small target: tile block 16x16, SIMD block 8x1 (R = (8/4) * 4), so narrow models fit.
SMALL = Target(
    name="test-small",
    vendor="test",
    simd_width=8,
    max_work_group_size=256,
    local_mem_bytes=64 * 1024,
    compute_units=1,
    mwg=16,
    nwg=16,
    kwg=16,
    mdimc=4,
    ndimc=4,
)


def spec(
    m: int, k: int, target: Target | None = SMALL, area: int = 1, name: str = "w"
) -> LayerSpec:
    return LayerSpec(name, (m, k), area, target)
