"""The experiment runner: dense model, then prune / fine-tune / compile / time per cell."""

from gpuprune.experiment.cell import run_cell
from gpuprune.experiment.config import ExperimentConfig, dump_config, load_config, parse_config
from gpuprune.experiment.runner import run_experiment

__all__ = [
    "ExperimentConfig",
    "dump_config",
    "load_config",
    "parse_config",
    "run_cell",
    "run_experiment",
]
