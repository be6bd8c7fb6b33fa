"""One experiment cell: prune the dense model with one method and sparsity, fine-tune, evaluate,
compile with each backend and time it. The result is one JSON file, written atomically.

Cells only read the dense model and write their own folder, so they can run in any order, in
separate processes or on Ray workers.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from gpuprune.data import ImageData, load_dataset, train_loader
from gpuprune.errors import UserError
from gpuprune.experiment.config import ExperimentConfig
from gpuprune.experiment.equal_latency import MATCHED, plan_matched
from gpuprune.experiment.latency import backend_device, compile_for, skippable, time_models
from gpuprune.fileio import atomic_write_text
from gpuprune.kernels.format import variant_for_method
from gpuprune.latency.solver import BudgetError
from gpuprune.models import create_model
from gpuprune.train import NonFiniteLossError, PrunerHook, fit
from gpuprune.train import distributed as ddp

DENSE_DIR = "dense"
CELLS_DIR = "cells"


def cell_id(method: str, sparsity: float, matched: bool = False) -> str:
    """``tile@0.75``, or ``tile+latency`` for a cell matched to the reference latency."""
    return f"{method}+{MATCHED}" if matched else f"{method}@{sparsity:g}"


def cell_name(method: str, sparsity: float, matched: bool = False) -> str:
    """The cell's file and folder name under ``cells/``."""
    return f"{method}-{MATCHED}" if matched else f"{method}-{sparsity:g}"


def cell_path(run_dir: Path, method: str, sparsity: float, matched: bool = False) -> Path:
    return run_dir / CELLS_DIR / f"{cell_name(method, sparsity, matched)}.json"


class Unreachable(UserError):
    """A matched cell's method cannot reach the reference latency (stored, not a failure)."""


def fresh_workdir(work: Path, key: str) -> None:
    """Keep a half-done folder only if it was made by the same settings (then it resumes)."""
    stamp = work / "key.txt"
    if work.exists() and (not stamp.exists() or stamp.read_text().strip() != key):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        atomic_write_text(stamp, key)


def cell_key(cfg: ExperimentConfig, matched: bool = False) -> str:
    """What a finished cell depends on; a cell stored under another key is run again.

    A latency-matched cell also depends on how it is matched (reference, backend, batches);
    grid cells do not, so adding ``equal_latency`` to a config reruns none of them.
    """
    prune = cfg.prune.model_dump(exclude={"methods", "sparsities"})  # other cells don't matter
    extra = {"equal_latency": cfg.equal_latency.model_dump(exclude={"methods", "tolerance"})}
    return cfg.digest("data", "model", "dense", "finetune", "latency", "seed", prune=prune,
                      **(extra if matched else {}))  # fmt: skip


@dataclass(frozen=True)
class _AtStep:
    """Prune once, at a given step (SSL: after the group lasso had time to shrink groups)."""

    step: int

    def should_apply(self, step: int, total: int) -> bool:
        return step == self.step

    def sparsity_at(self, step: int, total: int, final: float) -> float:
        return final


def load_data(cfg: ExperimentConfig) -> ImageData:
    d = cfg.data
    return load_dataset(d.name, root=d.root, download=d.download, train_subset=d.train_subset,
                        test_subset=d.test_subset, seed=cfg.seed, **d.options)  # fmt: skip


def build_model(cfg: ExperimentConfig, data: ImageData) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model.name, data.num_classes, data.in_channels, cfg.model.width)


def input_shape(data: ImageData) -> tuple[int, int, int]:
    return (data.in_channels, *data.image_size)


def prunable_layers(cfg: ExperimentConfig, model: nn.Module) -> list[str]:
    """The layers every method may prune (the same set is compiled for the dense baseline)."""
    from gpuprune.prune.layers import select_layers

    return list(select_layers(model, cfg.prune.exclude, cfg.prune.exclude_first_last))


def _schedule(cfg: ExperimentConfig, method: str, total: int) -> Any:
    import gpuprune.prune as gp

    p = cfg.prune
    if method == "ssl":
        return _AtStep(int(p.ssl_fraction * total))
    if p.schedule == "agp":
        options = {"end_step": max(1, int(p.ramp * total)), **p.schedule_options}
        return gp.get_schedule("agp", **options)
    return gp.get_schedule(p.schedule, **p.schedule_options)


def needs_calibration(cfg: ExperimentConfig) -> bool:
    """True when pruning reads calibration inputs (``obs`` importance or ``reconstruct``)."""
    from gpuprune.prune import IMPORTANCES

    return cfg.prune.reconstruct or IMPORTANCES.get(cfg.prune.importance).reconstructs


def calibration_batches(cfg: ExperimentConfig, data: ImageData,
                        images: int | None = None) -> list[Any]:  # fmt: skip
    """``images`` (default ``prune.calibration``) train images, unaugmented, in batches of 128.

    Under torchrun every rank takes the same images, so every rank computes the same masks.
    """
    images = images or cfg.prune.calibration
    loader = train_loader(data, min(128, images), cfg.seed, augment=False)
    out, seen = [], 0
    for x, y in loader:
        if seen >= images:
            break
        out.append((x, y))
        seen += len(y)
    return out


def _finetune_steps(cfg: ExperimentConfig, data: ImageData) -> int:
    ft = cfg.finetune
    steps = len(train_loader(data, ft.batch_size))
    if ft.steps_per_epoch is not None:
        steps = min(steps, ft.steps_per_epoch)
    return ft.epochs * steps


def run_cell(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float,
             data: ImageData | None = None, progress: bool = True, matched: bool = False
             ) -> dict[str, Any]:  # fmt: skip
    """Run one cell and store ``cells/<method>-<sparsity>.json``; returns the record.

    ``matched``: prune to the latency of ``equal_latency.reference`` instead of uniformly to
    ``sparsity`` (stored as ``cells/<method>-latency.json``).

    A failure inside the cell (NaN loss, a layer the method cannot prune, a kernel error) is
    stored as ``status: failed`` with the message, so the other cells still run.
    """
    started = time.perf_counter()
    record: dict[str, Any] = {"method": method, "sparsity": sparsity,
                              "key": cell_key(cfg, matched),
                              "equal_latency": matched,
                              "allocation": MATCHED if matched else cfg.prune.allocation}
    try:
        record.update(_run(cfg, run_dir, method, sparsity, data, progress, matched))
        record["status"] = "ok"
    except Unreachable as exc:
        record.update(status="unreachable", error=str(exc))
    except NonFiniteLossError as exc:
        record.update(status="failed", error=str(exc))
    except UserError as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # keep the other cells; the record says what broke
        last = traceback.format_exc().strip().splitlines()[-1]
        record.update(status="failed", error=f"internal error: {type(exc).__name__}: {exc}",
                      detail=last)  # fmt: skip
    record["seconds"] = time.perf_counter() - started
    if ddp.info().is_main:
        path = cell_path(run_dir, method, sparsity, matched)
        atomic_write_text(path, json.dumps(record, indent=1))
    ddp.barrier()
    return record


def _run(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float,
         data: ImageData | None, progress: bool, matched: bool = False
         ) -> dict[str, Any]:  # fmt: skip
    import gpuprune.prune as gp

    data = data if data is not None else load_data(cfg)
    ft_data = data.subset(train=cfg.finetune.train_subset, seed=cfg.seed + 1)
    model = build_model(cfg, data)
    model.load_state_dict(load_file(str(run_dir / DENSE_DIR / "model.safetensors")))
    p = cfg.prune
    pruner = gp.Pruner(
        model, method, target=p.target, importance=p.importance,
        allocation="plan" if matched else p.allocation, exclude=p.exclude,
        exclude_first_last=p.exclude_first_last, skip_small=p.skip_small,
        input_size=input_shape(data), method_options=p.method_options.get(method),
        reconstruct=p.reconstruct,
    )  # fmt: skip
    layers = prunable_layers(cfg, model)
    plan: dict[str, Any] = {}
    if matched:  # chosen on the dense model, then reached along the same schedule
        try:
            plan = plan_matched(cfg, model, pruner, data, layers)
        except BudgetError as exc:
            raise Unreachable(f"{cell_id(method, sparsity, True)} cannot reach the latency of "
                              f"{cfg.equal_latency.reference}: {exc.problem}") from None
        pruner.allocation_options["plan"] = plan["plan"]
        sparsity = plan["overall_sparsity"]
    total = _finetune_steps(cfg, ft_data)
    strength = p.ssl_strength if method == "ssl" else 0.0
    rank = ddp.info()  # under torchrun every rank fine-tunes a shard; rank 0 writes and times
    sync = (lambda: ddp.broadcast_module(model)) if rank.enabled else None
    calib = calibration_batches(cfg, ft_data) if needs_calibration(cfg) else None
    hook = PrunerHook(pruner, _schedule(cfg, method, total), sparsity, ssl_strength=strength,
                      sync=sync, data=(lambda: calib) if calib else None)  # fmt: skip
    work = run_dir / CELLS_DIR / cell_name(method, sparsity, matched)
    if rank.is_main:
        fresh_workdir(work, cell_key(cfg, matched))
    ddp.barrier()
    if total == 0:
        pruner.apply(sparsity, data=calib)
    name = cell_id(method, sparsity, matched)
    teacher = None
    if cfg.finetune.distill is not None:  # the dense model, frozen (fit never wraps it in DDP)
        teacher = build_model(cfg, data)
        teacher.load_state_dict(load_file(str(run_dir / DENSE_DIR / "model.safetensors")))
    result = fit(model, ft_data, cfg.finetune.train_config(cfg.seed), run_dir=work, resume=True,
                 hook=hook, progress=progress, desc=f"{name} fine-tune",
                 teacher=teacher)  # fmt: skip
    if not rank.is_main:
        return {"accuracy": result.test_acc}
    pruned = pruner.result()
    gp.save_pruned(work / "model.safetensors", model, pruned, model_name=cfg.model.name,
                   extra={"width": cfg.model.width, "accuracy": result.test_acc})  # fmt: skip

    model.cpu()
    dense = build_model(cfg, data)
    dense.load_state_dict(load_file(str(run_dir / DENSE_DIR / "model.safetensors")))
    latency, skip = {}, {}
    for backend in cfg.latency.backends:
        # Paired timing: the dense weights through the same kernel, timed in alternation with
        # the pruned model, so a machine that gets busier or quieter does not skew speedups.
        device = backend_device(backend)
        compiled = compile_for(model, p.target, backend, layers, method)
        base, latency[backend] = time_models(
            [compile_for(dense, p.target, backend, layers, method), compiled],
            input_shape(data), cfg.latency, cfg.seed, device,
        )  # fmt: skip
        latency[backend]["dense_ms"] = base["median_ms"]
        skip[backend] = skippable(compiled)
    (work / "checkpoint.pt").unlink(missing_ok=True)  # done: the pruned model file is enough
    per_layer = []
    for lr in pruned.layers:
        per_layer.append({
            "name": lr.name, "shape": list(lr.shape), "block": list(lr.block),
            "sparsity": lr.sparsity, "blocks_kept": lr.blocks_kept,
            "blocks_total": lr.blocks_total, "flops_dense": lr.flops_dense,
            "flops_kept": lr.flops_kept,
            "skippable": {b: skip[b].get(lr.name, 0.0) for b in skip},
        })  # fmt: skip
    out = {"matched": plan} if matched else {}
    return {
        **out,
        "variant": variant_for_method(method),
        "accuracy": result.test_acc,
        "test_loss": result.test_loss,
        "achieved_sparsity": pruned.sparsity,
        "flops_kept": pruned.flops_kept,
        "skipped_layers": list(pruned.skipped),
        "layers": per_layer,
        "latency": latency,
        "prune_events": hook.events,
        "finetune": {"steps": total, "seconds": result.seconds, "history": result.history},
    }
