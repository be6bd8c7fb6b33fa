"""Training: one loop for dense training and pruned fine-tuning, resumable and data-parallel."""

from gpuprune.train.config import TrainConfig, lr_at
from gpuprune.train.hooks import PrunerHook, TrainHook
from gpuprune.train.loop import NonFiniteLossError, TrainResult, evaluate, fit

__all__ = [
    "NonFiniteLossError",
    "PrunerHook",
    "TrainConfig",
    "TrainHook",
    "TrainResult",
    "evaluate",
    "fit",
    "lr_at",
]
