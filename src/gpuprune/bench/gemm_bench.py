"""GEMM-level benchmark: every VGG16 layer's GEMM, per method, sparsity, batch and backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from gpuprune.arch import get_target
from gpuprune.bench.config import BenchConfig
from gpuprune.bench.runners import RUNNERS, NotApplicable, Runner, Unavailable
from gpuprune.bench.timing import measure
from gpuprune.bench.workloads import GemmShape, masked_weight, vgg16_gemms
from gpuprune.kernels import pack_for
from gpuprune.prune import kernel_of

Record = dict
Progress = Callable[[str, bool], None]  # (what runs now, starts a new cell)


def _runners(cfg: BenchConfig) -> list[Runner]:
    names = cfg.runners or RUNNERS.names()
    return [RUNNERS.get(n) for n in names]


def plan(cfg: BenchConfig) -> Iterator[tuple[int, GemmShape, str, float]]:
    """(batch, shape, method, sparsity) cells, dense first for each layer."""
    for batch in cfg.batches:
        for shape in vgg16_gemms(batch, cfg.width):
            if cfg.layers and shape.layer not in cfg.layers:
                continue
            yield batch, shape, "dense", 0.0
            for method in cfg.methods:
                for s in cfg.sparsities:
                    yield batch, shape, method, s


def _check(out: torch.Tensor, want: torch.Tensor) -> float:
    """Largest error relative to the output's scale (outputs must match the masked dense GEMM)."""
    got = torch.as_tensor(out.get() if hasattr(out, "get") else out).float().reshape(want.shape)
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def run_gemm(cfg: BenchConfig, progress: Progress | None = None) -> list[Record]:
    """Measure every cell of ``plan(cfg)`` on every runner that applies; one record each."""
    target = get_target(cfg.target)
    runners = _runners(cfg)
    skipped: dict[str, str] = {}
    records: list[Record] = []
    dense_ms: dict[tuple[str, str, int], float] = {}
    for batch, shape, method, sparsity in plan(cfg):
        w = masked_weight(shape, method, sparsity, target)
        x = torch.randn(shape.n, shape.k, generator=torch.Generator().manual_seed(1))
        want = F.linear(x, w)
        density = float((w != 0).float().mean())
        variant = kernel_of(method) if method != "dense" else "tile"
        packed = pack_for(w, target, variant)
        if progress:
            progress(f"{shape.layer} b{batch} {method}@{sparsity:g}", True)
        for r in runners:
            if r.name in skipped or (r.methods is not None and method not in r.methods):
                continue
            if r.methods is None and method == "dense":
                continue  # skip variants are measured on pruned weights only
            if progress:
                progress(f"{shape.layer} b{batch} {method}@{sparsity:g} {r.name}", False)
            try:
                fn = r.make(w, x, target, method)
            except Unavailable as err:
                skipped[r.name] = str(err)
                continue
            except NotApplicable:
                continue
            err = _check(fn(), want)
            t = measure(fn, warmup=cfg.warmup, repeats=cfg.repeats, budget_s=cfg.budget_s)
            if method == "dense":
                dense_ms[(r.name, shape.layer, batch)] = t.median_ms
            records.append(
                {
                    "kind": "gemm",
                    "layer": shape.layer,
                    "batch": batch,
                    "m": shape.m,
                    "k": shape.k,
                    "n": shape.n,
                    "method": method,
                    "sparsity": sparsity,
                    "density": density,
                    "ideal_speedup": 1.0 / max(density, 1e-9),
                    "skippable_fraction": packed.skippable_fraction(),
                    "packed_bytes": packed.values.numel() * 4 + packed.col_idx.numel() * 4,
                    "dense_bytes": shape.m * shape.k * 4,
                    "backend": r.name,
                    "baseline": r.baseline,
                    "median_ms": t.median_ms,
                    "p25_ms": t.p25_ms,
                    "p75_ms": t.p75_ms,
                    "repeats": t.repeats,
                    "gflops_dense_equiv": shape.flops / t.median_ms / 1e6,
                    "max_rel_err": err,
                }
            )
    add_speedups(records, dense_ms, "torch-dense")
    if skipped:
        records.append({"kind": "skipped", "runners": skipped})
    return records


def add_speedups(
    records: list[Record], dense_ms: dict[tuple[str, str, int], float], torch_name: str
) -> None:
    """Speedup against the same backend's dense, against torch's dense, and efficiency vs ideal."""
    for rec in records:
        if rec.get("kind") not in ("gemm", "e2e"):
            continue
        own = dense_ms.get((rec["baseline"], rec["layer"], rec["batch"]))
        ref = dense_ms.get((torch_name, rec["layer"], rec["batch"]))
        rec["speedup"] = own / rec["median_ms"] if own else None
        rec["speedup_vs_torch_dense"] = ref / rec["median_ms"] if ref else None
        rec["efficiency"] = rec["speedup"] / rec["ideal_speedup"] if rec["speedup"] else None
