"""End-to-end benchmark: whole VGG16 inference, pruned by each method and compiled per backend.

A backend's dense baseline is the same compiled model with nothing pruned (every block walked), so
``speedup`` isolates what skipping buys; ``speedup_vs_torch_dense`` compares with eager PyTorch
(oneDNN) on the unpruned model, which is what a user runs today.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from gpuprune.arch import get_target
from gpuprune.bench.config import BenchConfig
from gpuprune.bench.timing import measure
from gpuprune.errors import UserError


def e2e_cells(cfg: BenchConfig) -> list[tuple[int, str, float]]:
    cells = []
    for batch in cfg.e2e_batches:
        cells.append((batch, "dense", 0.0))
        cells += [(batch, m, s) for m in cfg.e2e_methods for s in cfg.e2e_sparsities]
    return cells


def model_flops(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(dense, kept) multiply-add FLOPs of the Conv2d/Linear layers for input ``x``."""
    totals = [0, 0]

    def hook(module, _inp, out):
        positions = out[0, 0].numel() if out.dim() == 4 else 1
        w = module.weight
        totals[0] += 2 * w.numel() * positions * out.shape[0]
        totals[1] += 2 * int((w != 0).sum()) * positions * out.shape[0]

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return totals[0], totals[1]


def run_e2e(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> list[dict]:
    from gpuprune import prune as gp
    from gpuprune.models import create_model
    from gpuprune.nn import compile as compile_model

    target = get_target(cfg.target)
    records: list[dict] = []
    skipped: dict[str, str] = {}
    dense_ms: dict[tuple[str, int], float] = {}
    for batch, method, sparsity in e2e_cells(cfg):
        if progress:
            progress(f"VGG16 b{batch} {method}@{sparsity:g}")
        torch.manual_seed(0)
        base = create_model("vgg16", num_classes=10, in_channels=3, width=cfg.e2e_width).eval()
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        model = copy.deepcopy(base)
        if method != "dense":
            gp.prune(model, method=method, sparsity=sparsity, target=target, skip_small=True)
            gp.finalize(model)
        model.eval()
        flops_dense, flops_kept = model_flops(model, x)
        with torch.no_grad():
            want = model(x)
        for backend in cfg.e2e_backends:
            if backend in skipped or (backend == "torch" and method != "dense"):
                continue
            if backend == "torch":
                fn = model
            else:
                try:
                    # the dense baseline compiles every layer with the (non-skipping) tile kernel
                    fn = compile_model(
                        model,
                        target=target,
                        backend=backend,
                        methods=method if method != "dense" else "tile",
                        verbose=False,
                    )
                except UserError as err:
                    skipped[backend] = str(err)
                    continue

            def run(fn=fn, x=x):
                with torch.no_grad():
                    return fn(x)

            got = run()
            err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
            t = measure(run, warmup=cfg.warmup, repeats=cfg.repeats, budget_s=cfg.budget_s * 2)
            name = "torch-dense" if backend == "torch" else f"{backend}-e2e"
            if method == "dense":
                dense_ms[(name, batch)] = t.median_ms
            records.append(
                {
                    "kind": "e2e",
                    "layer": "end-to-end",
                    "model": f"vgg16(width={cfg.e2e_width:g})",
                    "batch": batch,
                    "method": method,
                    "sparsity": sparsity,
                    "backend": name,
                    "baseline": name,
                    "median_ms": t.median_ms,
                    "p25_ms": t.p25_ms,
                    "p75_ms": t.p75_ms,
                    "repeats": t.repeats,
                    "ideal_speedup": flops_dense / max(flops_kept, 1),
                    "max_rel_err": err,
                }
            )
    for rec in records:
        own = dense_ms.get((rec["baseline"], rec["batch"]))
        ref = dense_ms.get(("torch-dense", rec["batch"]))
        rec["speedup"] = own / rec["median_ms"] if own else None
        rec["speedup_vs_torch_dense"] = ref / rec["median_ms"] if ref else None
        rec["efficiency"] = rec["speedup"] / rec["ideal_speedup"] if rec["speedup"] else None
    if skipped:
        records.append({"kind": "skipped", "runners": skipped})
    return records
