"""The GPU architecture model: Targets, presets, detection."""

from gpuprune.arch.presets import TARGETS, get_target, list_targets
from gpuprune.arch.target import Target

__all__ = ["TARGETS", "Target", "get_target", "list_targets"]
