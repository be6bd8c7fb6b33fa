"""Skip execution: the packed weight format and the backends whose kernels walk only kept blocks.

``format`` packs a masked [M, K] GEMM weight per row-block; ``backends`` defines the
:class:`Backend` interface and the :data:`BACKENDS` registry ("reference", "opencl", "cpu",
"triton"); ``reference`` is the plain-PyTorch correctness oracle.
"""

from gpuprune.kernels.backends import BACKENDS, Backend, backend_names, get_backend
from gpuprune.kernels.format import (
    VARIANTS,
    BlockSparseWeight,
    block_for,
    pack,
    pack_for,
)

__all__ = [
    "BACKENDS",
    "VARIANTS",
    "Backend",
    "BlockSparseWeight",
    "backend_names",
    "block_for",
    "get_backend",
    "pack",
    "pack_for",
]
