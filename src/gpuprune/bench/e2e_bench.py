"""End-to-end benchmark: whole-model inference, pruned by each method and compiled per backend,
next to the dense runtimes a CPU user would deploy with.

Per (model, batch), every path is built first and then timed in alternation (a, b, c, a, b, c...),
so a host that gets busier or quieter shifts all of them alike and their ratios stay fair. Each
turn times one call after ``warm_s`` of untimed ones and then idles ``settle_s``
(:func:`~gpuprune.bench.timing.measure_many`): every library runs back to back at its default
thread-pool wait policy, as in a serving loop, and none spins on the next path's cores. Each
record carries three speedups:

- ``speedup``: against the same backend's dense model (the same compiled model with nothing
  pruned, every block walked): what skipping buys;
- ``speedup_vs_torch_dense``: against eager PyTorch (oneDNN) on the unpruned model;
- ``speedup_vs_best_dense``: against the fastest dense path measured in the run (eager PyTorch,
  OpenVINO, ONNX Runtime, ``torch.compile``), named in ``best_dense_runtime``.

Runtimes also run the masked model (``openvino-masked``...): a dense runtime cannot skip the
zeros, so those rows show what pruning alone buys without gpuprune's kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gpuprune.arch import get_target
from gpuprune.bench.config import BenchConfig
from gpuprune.bench.dense_runtimes import (
    DENSE_RUNTIMES,
    EAGER,
    best_dense,
    dense_backends,
    runtime_backend,
)
from gpuprune.bench.runners import Unavailable
from gpuprune.bench.timing import measure_many
from gpuprune.errors import UserError


@dataclass(frozen=True)
class E2EModel:
    """A model of the end-to-end runs and the input it is measured on."""

    side: int  # input height and width
    num_classes: int
    scalable: bool  # takes the run's channel multiplier (e2e_width)


E2E_MODELS = {
    "vgg16": E2EModel(side=32, num_classes=10, scalable=True),
    "resnet50": E2EModel(side=224, num_classes=1000, scalable=False),
}
# runtimes that also run the masked (pruned, not skipped) model; torch.compile is dense only
MASKED_RUNTIMES = ("openvino", "onnxruntime")


def e2e_cells(cfg: BenchConfig) -> list[tuple[str, int, str, float]]:
    """(model, batch, method, sparsity) in the order they are built; dense first per group."""
    cells = []
    for model in cfg.e2e_models:
        for batch in cfg.e2e_batches:
            cells.append((model, batch, "dense", 0.0))
            cells += [(model, batch, m, s) for m in cfg.e2e_methods for s in cfg.e2e_sparsities]
    return cells


def model_label(name: str, cfg: BenchConfig) -> str:
    spec = E2E_MODELS[name]
    width = f"width={cfg.e2e_width:g}, " if spec.scalable and cfg.e2e_width != 1 else ""
    return f"{name}({width}{spec.side}x{spec.side})"


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


def _build_model(name: str, cfg: BenchConfig, method: str, sparsity: float) -> nn.Module:
    from gpuprune import prune as gp
    from gpuprune.models import create_model

    spec = E2E_MODELS[name]
    torch.manual_seed(0)
    width = cfg.e2e_width if spec.scalable else 1.0
    model = create_model(name, num_classes=spec.num_classes, in_channels=3, width=width).eval()
    if method != "dense":
        gp.prune(model, method=method, sparsity=sparsity, target=get_target(cfg.target),
                 skip_small=True)  # fmt: skip
        gp.finalize(model)
    return model.eval()


def _paths(cfg, model, x, method, skipped) -> list[tuple[str, str, Callable]]:
    """(backend record name, baseline name, callable) for every path that runs this cell."""
    from gpuprune.nn import compile as compile_model

    out = []
    for backend in cfg.e2e_backends:
        if backend in skipped or (backend == "torch" and method != "dense"):
            continue
        if backend == "torch":
            fn = model
        else:
            try:
                # the dense baseline compiles every layer with the (non-skipping) tile kernel
                fn = compile_model(model, target=get_target(cfg.target), backend=backend,
                                   methods=method if method != "dense" else "tile",
                                   verbose=False)  # fmt: skip
            except UserError as err:
                skipped[backend] = str(err)
                continue
        name = EAGER if backend == "torch" else f"{backend}-e2e"
        out.append((name, name, _no_grad(fn, x)))
    for runtime in cfg.e2e_runtimes:
        masked = method != "dense"
        name = runtime_backend(runtime, masked)
        if name in skipped or (masked and runtime not in MASKED_RUNTIMES):
            continue
        try:
            fn = DENSE_RUNTIMES.get(runtime)(model, x)
        except Unavailable as err:
            skipped[name] = str(err)
            continue
        out.append((name, runtime_backend(runtime, False), fn))
    return out


def _no_grad(fn, x):
    def run():
        with torch.no_grad():
            return fn(x)

    return run


def run_e2e(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> list[dict]:
    records: list[dict] = []
    skipped: dict[str, str] = {}
    for model_name, batch in dict.fromkeys((m, b) for m, b, _, _ in e2e_cells(cfg)):
        spec = E2E_MODELS[model_name]
        label = model_label(model_name, cfg)
        x = torch.randn(batch, 3, spec.side, spec.side, generator=torch.Generator().manual_seed(1))
        group: list[tuple[dict, Callable]] = []
        for _, _, method, sparsity in (c for c in e2e_cells(cfg) if c[:2] == (model_name, batch)):
            if progress:
                progress(f"{model_name} b{batch} {method}@{sparsity:g}")
            model = _build_model(model_name, cfg, method, sparsity)
            flops_dense, flops_kept = model_flops(model, x)
            with torch.no_grad():
                want = model(x)
            for name, baseline, fn in _paths(cfg, model, x, method, skipped):
                got = fn()
                err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
                rec = {
                    "kind": "e2e",
                    "layer": "end-to-end",
                    "model": label,
                    "batch": batch,
                    "method": method,
                    "sparsity": sparsity,
                    "backend": name,
                    "baseline": baseline,
                    "ideal_speedup": flops_dense / max(flops_kept, 1),
                    "max_rel_err": err,
                }
                group.append((rec, fn))
        if progress:
            progress(f"{model_name} b{batch}: timing {len(group)} paths side by side")
        timings = measure_many(
            [fn for _, fn in group],
            warmup=cfg.warmup,
            repeats=cfg.repeats,
            budget_s=cfg.budget_s * 2 * len(group),
            settle_s=cfg.settle_s,
            warm_s=cfg.warm_s,
        )
        for (rec, _), t in zip(group, timings, strict=True):
            rec.update(median_ms=t.median_ms, p25_ms=t.p25_ms, p75_ms=t.p75_ms, repeats=t.repeats)
            records.append(rec)
    add_speedups(records, cfg.e2e_runtimes)
    if skipped:
        records.append({"kind": "skipped", "runners": skipped})
    return records


def add_speedups(records: list[dict], runtimes: tuple[str, ...]) -> None:
    """Fill each e2e record's speedups against its own dense, eager and the best dense path."""
    e2e = [r for r in records if r.get("kind") == "e2e"]
    dense_ms = {(r["model"], r["batch"], r["backend"]): r["median_ms"]
                for r in e2e if r["method"] == "dense"}  # fmt: skip
    best = best_dense(e2e, dense_backends(runtimes))
    for rec in e2e:
        key = (rec["model"], rec["batch"])
        own = dense_ms.get((*key, rec["baseline"]))
        ref = dense_ms.get((*key, EAGER))
        name, best_ms = best.get(key, (None, None))
        rec["speedup"] = own / rec["median_ms"] if own else None
        rec["speedup_vs_torch_dense"] = ref / rec["median_ms"] if ref else None
        rec["speedup_vs_best_dense"] = best_ms / rec["median_ms"] if best_ms else None
        rec["best_dense_runtime"] = name
        rec["efficiency"] = rec["speedup"] / rec["ideal_speedup"] if rec["speedup"] else None
