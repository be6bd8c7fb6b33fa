"""Shared by the nn tests: a target with small blocks, and the CPU backends present here."""

from __future__ import annotations

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.kernels import get_backend

# tile block 16x16, SIMD block 8x1: small layers still hold whole blocks
SMALL = Target(name="test-small", vendor="test", simd_width=8, max_work_group_size=256,
               local_mem_bytes=64 * 1024, compute_units=1, mwg=16, nwg=16, kwg=16, mdimc=4,
               ndimc=4)  # fmt: skip


def backends() -> list[str]:
    """The CPU-side backends that run on this machine (reference always; cpu with a compiler)."""
    out = []
    for name in ("reference", "cpu"):
        try:
            get_backend(name).check_available()
            out.append(name)
        except UserError:
            pass
    return out
