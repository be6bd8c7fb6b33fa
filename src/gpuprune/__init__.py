"""gpuprune: prune CNNs at the finest granularity a GPU can skip, and run kernels that skip it."""

from gpuprune import prune  # the subpackage is callable: gpuprune.prune(model, ...)
from gpuprune.arch import TARGETS, Target, get_target, list_targets
from gpuprune.errors import UserError
from gpuprune.gemm import from_gemm, gemm_view
from gpuprune.geometry import ConvGeometry
from gpuprune.models.factory import ModelSpec
from gpuprune.plan import LayerPlan, PrunePlan
from gpuprune.prune import (
    Loaded,
    Pruner,
    finalize,
    load,
    load_pruned,
    save_pruned,
    sparsity_report,
)

__version__ = "0.1.0"

__all__ = [
    "TARGETS",
    "ConvGeometry",
    "LayerPlan",
    "Loaded",
    "ModelSpec",
    "PrunePlan",
    "Pruner",
    "Target",
    "UserError",
    "__version__",
    "finalize",
    "from_gemm",
    "gemm_view",
    "get_target",
    "list_targets",
    "load",
    "load_pruned",
    "prune",
    "save_pruned",
    "sparsity_report",
]


def __getattr__(name: str):
    # compile() pulls in the kernel backends; load it on first use only.
    if name == "compile":
        from gpuprune.nn import compile as compile_model

        return compile_model
    raise AttributeError(f"module 'gpuprune' has no attribute {name!r}")
