"""gpuprune: prune CNNs at the finest granularity a GPU can skip, and run kernels that skip it."""

from gpuprune.arch import TARGETS, Target, get_target, list_targets
from gpuprune.errors import UserError
from gpuprune.gemm import from_gemm, gemm_view

__version__ = "0.1.0"

__all__ = [
    "TARGETS",
    "Target",
    "UserError",
    "__version__",
    "from_gemm",
    "gemm_view",
    "get_target",
    "list_targets",
]
