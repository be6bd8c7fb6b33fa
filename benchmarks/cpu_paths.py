"""What the CPU A/B scripts (``ab_kernel.py``, ``ab_chain.py``, ``phases.py``) share: the model
arguments, an input of the end-to-end benchmark's size, the pruned model compiled for the
``cpu`` backend as ``gpuprune bench`` builds it, timing two paths in alternating rounds, and
the JSON result."""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gpuprune.bench.config import BenchConfig
from gpuprune.bench.e2e_bench import E2E_MODELS, _build_model
from gpuprune.fileio import atomic_write_text
from gpuprune.nn import compile as compile_model


def add_model_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    parser.add_argument("--model", choices=sorted(E2E_MODELS), default=model)
    parser.add_argument("--width", type=float, default=0.5, help="VGG16's channel multiplier")
    parser.add_argument("--method", default="tile")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)


def add_round_arguments(parser: argparse.ArgumentParser, rounds: int, warm: int, calls: int
                        ) -> None:  # fmt: skip
    """``--rounds``, ``--warm`` and ``--calls`` of alternating_times, and ``-o/--out`` (JSON)."""
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--warm", type=int, default=warm, help="untimed calls per round")
    parser.add_argument("--calls", type=int, default=calls, help="timed calls per round")
    parser.add_argument("-o", "--out", type=Path)


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


def model_fields(args: argparse.Namespace) -> dict:
    """The model arguments as a result records them."""
    return {"model": args.model, "width": args.width if args.model == "vgg16" else None,
            "method": args.method, "sparsity": args.sparsity, "batch": args.batch,
            "threads": args.threads}  # fmt: skip


def round_times(
    paths: dict[str, Callable[[], object]], r: int, warm: int, calls: int,
    enter: Callable[[str], None] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Round ``r`` of :func:`alternating_times`: per path the mean ms of ``calls`` timed calls
    after ``warm`` untimed ones, the paths in order in even rounds and reversed in odd ones."""
    order = list(paths.items())
    times: dict[str, float] = {}
    for name, fn in order if r % 2 == 0 else order[::-1]:
        if enter is not None:
            enter(name)
        for _ in range(warm):
            fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times[name] = (time.perf_counter() - t0) / calls * 1e3
    return times


def alternating_times(
    paths: dict[str, Callable[[], object]], rounds: int, warm: int, calls: int,
    enter: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:  # fmt: skip
    """Per path, the mean ms of ``calls`` timed calls in each of ``rounds`` rounds, after ``warm``
    untimed ones; the paths take turns going first (no order bias). ``enter(name)`` runs before
    a path's calls (e.g. switching the kernel library)."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        for name, ms in round_times(paths, r, warm, calls, enter).items():
            times[name].append(ms)
    return times


def time_models(models: dict[str, nn.Module], x: torch.Tensor, args: argparse.Namespace,
                enter: Callable[[str], None] | None = None) -> dict[str, list[float]]:  # fmt: skip
    """:func:`alternating_times` of each model's forward on ``x`` (no grad), after one untimed
    call each that prepares its layers' arguments for this shape; ``enter`` as there."""
    with torch.no_grad():
        for name, model in models.items():
            if enter is not None:
                enter(name)
            model(x)
        return alternating_times({name: lambda m=m: m(x) for name, m in models.items()},
                                 args.rounds, args.warm, args.calls, enter)  # fmt: skip


def round_ratios(times: dict[str, list[float]], num: str, den: str
                 ) -> tuple[dict[str, float], float, list[float]]:  # fmt: skip
    """(median ms per path, the ratio of ``num``'s median to ``den``'s, the quartiles of the
    per-round ratios)."""
    med = {name: statistics.median(t) for name, t in times.items()}
    ratios = [a / b for a, b in zip(times[num], times[den], strict=True)]
    return med, med[num] / med[den], statistics.quantiles(ratios, n=4)


def save(out: Path | None, result: dict) -> None:
    """Write ``result`` as JSON to ``out`` (atomically), if given."""
    if out:
        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
