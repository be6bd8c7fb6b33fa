"""What the CPU A/B scripts (``ab_kernel.py``, ``ab_chain.py``, ``phases.py``) share: the model
arguments, an input of the end-to-end benchmark's size, and the pruned model compiled for the
``cpu`` backend as ``gpuprune bench`` builds it."""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

from gpuprune.bench.config import BenchConfig
from gpuprune.bench.e2e_bench import E2E_MODELS, _build_model
from gpuprune.nn import compile as compile_model


def add_model_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    parser.add_argument("--model", choices=sorted(E2E_MODELS), default=model)
    parser.add_argument("--width", type=float, default=0.5, help="VGG16's channel multiplier")
    parser.add_argument("--method", default="tile")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)


def setup(args: argparse.Namespace) -> tuple[BenchConfig, torch.Tensor]:
    """The benchmark config and a random input of the model's size; sets the thread count."""
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    side = E2E_MODELS[args.model].side
    return BenchConfig(e2e_width=args.width), torch.randn(args.batch, 3, side, side)


def compiled_pruned(args: argparse.Namespace, cfg: BenchConfig) -> nn.Module:
    """The model pruned with ``args.method`` at ``args.sparsity``, compiled for ``cpu``."""
    model = _build_model(args.model, cfg, args.method, args.sparsity)
    return compile_model(model, target=cfg.target, backend="cpu", methods=args.method,
                         verbose=False)  # fmt: skip
