"""Model-zoo benchmark: ImageNet models pruned (tile, simd), compiled, timed end to end.

Each model (random weights, never downloaded) runs at each batch size in every dense runtime of
:data:`DENSE_RUNTIMES` (eager PyTorch, torch.compile, ...) and, pruned by each method and
compiled by gpuprune, in the skip kernels. All of one (model, batch) are timed in alternation, so
load from other processes hits them alike. Speedups are against eager PyTorch and against the
fastest dense runtime of the same run. Layers gpuprune left dense are listed per record.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from gpuprune.bench.dense_runtimes import DENSE_RUNTIMES
from gpuprune.bench.timing import measure_many
from gpuprune.errors import UserError

EAGER_RUNTIME = "eager"  # eager PyTorch; every other name is a runtime of DENSE_RUNTIMES


def check_runtimes(names: Sequence[str]) -> None:
    """Refuse an unknown dense runtime name (one line) before anything runs."""
    for name in names:
        if name != EAGER_RUNTIME:
            DENSE_RUNTIMES.get(name)


def dense_runtime(name: str, model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A no-argument call running ``model`` on ``x`` in the dense runtime ``name``: eager
    PyTorch, or one of :data:`~gpuprune.bench.dense_runtimes.DENSE_RUNTIMES` (the one place
    where the runtimes a CPU user deploys with are defined, shared with the end-to-end bench)."""
    if name == EAGER_RUNTIME:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(x)

        return run
    return DENSE_RUNTIMES.get(name)(model, x)


# name -> (package, constructor name); ImageNet classifiers taking 3 x H x W images
ZOO_MODELS: dict[str, tuple[str, str]] = {
    "resnet18": ("torchvision", "resnet18"),
    "resnet50": ("torchvision", "resnet50"),
    "mobilenet_v2": ("torchvision", "mobilenet_v2"),
    "efficientnet_b0": ("torchvision", "efficientnet_b0"),
    "convnext_tiny": ("torchvision", "convnext_tiny"),
    "vit_tiny": ("timm", "vit_tiny_patch16_224"),
}


@dataclass(frozen=True)
class ZooConfig:
    models: tuple[str, ...] = tuple(ZOO_MODELS)
    batches: tuple[int, ...] = (1, 8)
    size: int = 224
    methods: tuple[str, ...] = ("tile", "simd")
    sparsity: float = 0.75
    runtimes: tuple[str, ...] = (EAGER_RUNTIME, "torch-compile", "openvino", "onnxruntime")
    target: str = "cpu-pocl"
    backend: str = "cpu"
    warmup: int = 2
    repeats: int = 7
    budget_s: float = 20.0
    settle_s: float = 0.03  # idle after each timed call: see BenchConfig
    warm_s: float = 0.05  # untimed calls before each timed one: see BenchConfig

    def with_(self, **changes) -> ZooConfig:
        return replace(self, **changes)


ZOO_FULL = ZooConfig()
# Small enough to test: one small model at 64x64, batch 1, eager only (< 1 minute on 2 cores).
ZOO_QUICK = ZooConfig(models=("resnet18",), batches=(1,), size=64, runtimes=(EAGER_RUNTIME,),
                      repeats=3, budget_s=2.0)  # fmt: skip


def _import(package: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UserError(
            f"the model zoo needs {package}, which is not installed",
            "pip install torchvision timm",
        ) from None
    except Exception as err:  # e.g. a torchvision wheel built for another torch
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"{package} is installed but fails to import ({first[:120]})",
            "install a torchvision build matching your torch (CPU), or run "
            "benchmarks/zoo.py, which works around a mismatched wheel",
        ) from None


def check_zoo(models: Sequence[str]) -> None:
    """Raise a one-line :class:`UserError` if a model is unknown or its package won't import."""
    for name in models:
        if name not in ZOO_MODELS:
            raise UserError(f"unknown zoo model {name!r}", f"choose from {', '.join(ZOO_MODELS)}")
    for package in dict.fromkeys(ZOO_MODELS[n][0] for n in models):
        _import(package)


def zoo_model(name: str) -> nn.Module:
    """A zoo model with random weights (seed 0), in eval mode."""
    package, ctor = ZOO_MODELS[name]
    mod = _import(package)
    torch.manual_seed(0)
    if package == "timm":
        return mod.create_model(ctor, pretrained=False).eval()
    return getattr(mod.models, ctor)(weights=None).eval()


def _flops(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(dense, kept) multiply-add FLOPs x 2 of the Conv/Linear layers for input ``x``."""
    totals = [0, 0]

    def hook(module, _inp, out):
        n = out.shape[0] * (out[0].numel() // out.shape[1 if isinstance(module, nn.Conv2d) else -1])
        totals[0] += 2 * module.weight.numel() * n
        totals[1] += 2 * int((module.weight != 0).sum()) * n

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]  # fmt: skip
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return totals[0], totals[1]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def zoo_cells(cfg: ZooConfig) -> list[tuple[str, int]]:
    return [(m, b) for m in cfg.models for b in cfg.batches]


def run_zoo(cfg: ZooConfig, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Measure every (model, batch) of ``cfg``; one record per (variant, runtime)."""
    from gpuprune.nn import compile as compile_model
    from gpuprune.prune import finalize, prune

    check_zoo(cfg.models)
    check_runtimes(cfg.runtimes)
    records: list[dict] = []
    for name, batch in zoo_cells(cfg):
        if progress:
            progress(f"{name} b{batch}")
        base = zoo_model(name)
        x = torch.randn(batch, 3, cfg.size, cfg.size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            dense_out = base(x)
        common = {"kind": "zoo", "model": name, "batch": batch, "size": cfg.size}
        runs: list[tuple[dict, Callable[[], torch.Tensor]]] = []
        flops_dense, _ = _flops(base, x)
        for runtime in cfg.runtimes:
            try:
                fn = dense_runtime(runtime, base, x)
                with torch.no_grad():
                    err = _rel_err(fn(), dense_out)
            except Exception as err:  # a runtime that cannot run this model: noted, run goes on
                records.append({**common, "kind": "note", "runtime": runtime,
                                "why": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                                if str(err) else type(err).__name__})  # fmt: skip
                continue
            runs.append(({**common, "variant": "dense", "runtime": runtime, "sparsity": 0.0,
                          "ideal_speedup": 1.0, "max_rel_err": err}, fn))  # fmt: skip
        for method in cfg.methods:
            model = copy.deepcopy(base)
            result = prune(model, method=method, sparsity=cfg.sparsity, target=cfg.target,
                           skip_small=True, input_size=(3, cfg.size, cfg.size))  # fmt: skip
            finalize(model)
            with torch.no_grad():
                want = model(x)
            fd, fk = _flops(model, x)
            compiled = compile_model(model, target=cfg.target, backend=cfg.backend)
            report = getattr(compiled, "gpuprune_compile", None)
            with torch.no_grad():
                err = _rel_err(compiled(x), want)
            rec = {
                **common, "variant": method, "runtime": f"gpuprune-{cfg.backend}",
                "sparsity": round(result.sparsity, 4), "ideal_speedup": fd / max(fk, 1),
                "max_rel_err": err, "layers_pruned": len(result.layers),
                "layers_skipped_by_prune": [lay.to_dict() for lay in result.skipped],
                "layers_compiled": len(report.layers) if report else None,
                "layers_left_dense": [lay.to_dict() for lay in report.dense] if report else None,
            }  # fmt: skip
            runs.append((rec, lambda c=compiled, x=x: c(x)))
        with torch.no_grad():
            timings = measure_many([fn for _, fn in runs], warmup=cfg.warmup,
                                   repeats=cfg.repeats, budget_s=cfg.budget_s,
                                   settle_s=cfg.settle_s, warm_s=cfg.warm_s)  # fmt: skip
        dense = {r["runtime"]: t.median_ms for (r, _), t in zip(runs, timings, strict=True)
                 if r["variant"] == "dense"}  # fmt: skip
        best = min(dense, key=dense.get) if dense else None
        for (rec, _), t in zip(runs, timings, strict=True):
            rec.update(median_ms=t.median_ms, p25_ms=t.p25_ms, p75_ms=t.p75_ms,
                       repeats=t.repeats, flops_dense=flops_dense, best_dense=best)  # fmt: skip
            eager = dense.get(EAGER_RUNTIME)
            rec["speedup_vs_eager"] = eager / t.median_ms if eager else None
            rec["speedup_vs_best_dense"] = dense[best] / t.median_ms if best else None
            records.append(rec)
    return records


def markdown_table(records: list[dict]) -> str:
    """One row per (model, batch): dense times per runtime, pruned times and speedups."""
    rows = [r for r in records if r.get("kind") == "zoo"]
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows if r["variant"] == "dense"))
    methods = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "dense"))
    head = ["model", "batch", *[f"dense {rt} ms" for rt in runtimes]]
    for m in methods:
        head += [f"{m} ms", f"{m} vs eager", f"{m} vs best dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        cell = {(r["variant"], r["runtime"]): r for r in rows
                if r["model"] == model and r["batch"] == batch}  # fmt: skip
        out = [model, str(batch)]
        out += [f"{cell[('dense', rt)]['median_ms']:.1f}" if ("dense", rt) in cell else "-"
                for rt in runtimes]  # fmt: skip
        for m in methods:
            rec = next((v for (var, _), v in cell.items() if var == m), None)
            if rec is None:
                out += ["-"] * 3
                continue
            out += [f"{rec['median_ms']:.1f}", _x(rec["speedup_vs_eager"]),
                    _x(rec["speedup_vs_best_dense"])]  # fmt: skip
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"
