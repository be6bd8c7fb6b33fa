"""End-to-end latency of a model compiled with one backend: median of repeats after warm-up."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gpuprune.bench.timing import measure_many
from gpuprune.experiment.config import LatencySection


def compile_for(model: nn.Module, target: str, backend: str, layers: list[str], kernel: str
                ) -> nn.Module:  # fmt: skip
    """Compile ``layers`` of ``model`` with the ``kernel`` variant (the others stay dense).

    Every layer named is compiled, skippable or not, so a pruned model and its dense twin run
    the same kernels on the same layers and their times compare.
    """
    import warnings

    from gpuprune.nn import compile as compile_model

    with warnings.catch_warnings():  # the notes stay in the report; cells must not chatter
        warnings.simplefilter("ignore")
        return compile_model(model, target=target, backend=backend,
                             kernels=dict.fromkeys(layers, kernel))  # fmt: skip


def backend_device(backend: str) -> torch.device:
    """Where a compiled model runs: the GPU for Triton (when there is one), else the CPU."""
    if backend in ("triton", "torch-cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def time_models(models: list[nn.Module], input_shape: tuple[int, ...], cfg: LatencySection,
                seed: int = 0, device: torch.device | str = "cpu"
                ) -> list[dict[str, Any]]:  # fmt: skip
    """Like :func:`time_model` for several models timed in alternation on the same input, so
    their ratio is not skewed by load that changes while they run."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.batch_size, *input_shape, generator=gen).to(device)

    def runner(model: nn.Module):
        model.to(device).eval()

        def forward() -> None:
            model(x)
            if device.type == "cuda":  # kernels are asynchronous: wait for them
                torch.cuda.synchronize()

        return forward

    times = measure_many([runner(m) for m in models], warmup=cfg.warmup, repeats=cfg.repeats,
                         budget_s=cfg.budget_s, ci_rel=cfg.ci_rel)  # fmt: skip
    return [{"median_ms": t.median_ms, "p25_ms": t.p25_ms, "p75_ms": t.p75_ms,
             "ci_ms": [t.ci_low_ms, t.ci_high_ms], "repeats": t.repeats,
             "batch_size": cfg.batch_size, "device": str(device)}
            for t in times]  # fmt: skip


def time_model(model: nn.Module, input_shape: tuple[int, ...], cfg: LatencySection,
               seed: int = 0, device: torch.device | str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Median/quartile forward latency in ms for a batch of ``cfg.batch_size`` random inputs."""
    return time_models([model], input_shape, cfg, seed, device)[0]


def skippable(compiled: nn.Module) -> dict[str, float]:
    """Per compiled layer: the share of its kernel blocks that are skipped."""
    report = getattr(compiled, "gpuprune_compile", None)
    return {lay.name: lay.skippable for lay in report.layers} if report is not None else {}
