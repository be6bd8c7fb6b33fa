"""One experiment cell: prune the dense model with one method and sparsity, fine-tune, evaluate,
compile with each backend and time it. The result is one JSON file, written atomically.

Cells only read the dense model and write their own folder, so they can run in any order, in
separate processes or on Ray workers.
"""

from __future__ import annotations

import functools
import json
import os
import time
import traceback
from collections.abc import Callable
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
from gpuprune.fileio import (
    MARKER,
    atomic_write_text,
    file_sha256,
    read_record,
    set_aside,
    write_record,
)
from gpuprune.gemm import K_ORDER
from gpuprune.latency.solver import BudgetError
from gpuprune.models import ModelSpec
from gpuprune.train import NonFiniteLossError, PrunerHook, fit
from gpuprune.train import distributed as ddp

DENSE_DIR = "dense"
CELLS_DIR = "cells"
STALE_DIR = "stale"  # results of earlier settings, moved here instead of deleted


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


def stale_root(work: Path) -> Path:
    """``<run>/stale``: where results of earlier settings go (``work`` is in dense/ or cells/)."""
    return work.parent.parent / STALE_DIR if work.parent.name == CELLS_DIR else (
        work.parent / STALE_DIR)  # fmt: skip


def fresh_workdir(work: Path, key: str) -> None:
    """Keep a half-done folder only if it was made by the same settings (then it resumes).

    One made by other settings is moved to ``<run>/stale/`` (never deleted); a folder that
    gpuprune did not create is refused (see :func:`gpuprune.fileio.set_aside`).
    """
    stamp = work / "key.txt"
    if work.exists() or work.is_symlink():
        same = work.is_dir() and stamp.is_file() and stamp.read_text().strip() == key
        if not same:
            set_aside(work, stale_root(work))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / MARKER).exists():
        atomic_write_text(work / MARKER, "made by gpuprune: it may move or replace files here\n")
    if not stamp.exists():
        atomic_write_text(stamp, key)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return file_sha256(path)


def _content_digest(name: str, path: str | None) -> dict[str, str]:
    if not path:
        return {}
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {name: _file_digest(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)}


def weights_digest(cfg: ExperimentConfig) -> dict[str, str]:
    """``{"checkpoint_sha256": ...}`` of ``model.checkpoint`` ({} without one, or if missing).

    Results depend on the file's content, not its path: a new file at the same path reruns
    the dense phase and every cell.
    """
    return _content_digest("checkpoint_sha256", cfg.model.checkpoint)


def _allocation_digest(cfg: ExperimentConfig) -> dict[str, str]:
    """The sha256 of a ``prune.allocation`` JSON file: cells depend on its content."""
    alloc = cfg.prune.allocation
    return _content_digest("allocation_sha256", alloc if alloc.lower().endswith(".json") else None)


def dense_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The dense weights, checked against the sha256 stored in ``dense/result.json``.

    Raises:
        UserError: the file is missing or damaged (a rerun retrains or reloads it).
    """
    path = run_dir / DENSE_DIR / "model.safetensors"
    want = read_record(run_dir / DENSE_DIR / "result.json").get("model_sha256")
    if want is None or not path.is_file() or file_sha256(path) != want:
        raise UserError(f"{path} is missing or damaged (its checksum does not match)",
                        "rerun 'gpuprune run': it rebuilds the dense model")  # fmt: skip
    return load_file(str(path))


def cell_key(cfg: ExperimentConfig, matched: bool = False) -> str:
    """What a finished cell depends on; a cell stored under another key is run again.

    A latency-matched cell also depends on how it is matched (reference, backend, batches);
    grid cells do not, so adding ``equal_latency`` to a config reruns none of them.
    """
    # the grid (other cells) does not matter
    prune = cfg.prune.model_dump(exclude={"methods", "sparsities", "sparsities_for"})
    if not prune["permute"]:  # runs made before the option keep their keys
        del prune["permute"]
    extra = {"equal_latency": cfg.equal_latency.model_dump(exclude={"methods", "tolerance"})}
    # masks depend on the conv K order their blocks are taken in (gemm.K_ORDER)
    return cfg.digest("data", "model", "dense", "finetune", "latency", "seed", prune=prune,
                      k_order=K_ORDER, **weights_digest(cfg), **_allocation_digest(cfg),
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


def model_spec(cfg: ExperimentConfig, data: ImageData) -> ModelSpec:
    return ModelSpec(cfg.model.name, data.num_classes, data.in_channels, cfg.model.width)


def build_model(cfg: ExperimentConfig, data: ImageData) -> nn.Module:
    """The config's model; its name comes from a file, so only registered names build."""
    torch.manual_seed(cfg.seed)
    return model_spec(cfg, data).build(allow_import=False)


def input_shape(data: ImageData) -> tuple[int, int, int]:
    return (data.in_channels, *data.image_size)


def prunable_layers(cfg: ExperimentConfig, model: nn.Module) -> list[str]:
    """The layers every method may prune (the same set is compiled for the dense baseline)."""
    from gpuprune.prune.layers import select_layers

    return list(select_layers(model, cfg.prune.exclude, cfg.prune.exclude_first_last))


def schedule_for(cfg: ExperimentConfig, method: str, total: int) -> Any:
    import gpuprune.prune as gp

    p = cfg.prune
    if method == "ssl":
        return _AtStep(int(p.ssl_fraction * total))
    if p.schedule == "agp":
        options = {"end_step": max(1, int(p.ramp * total)), **p.schedule_options}
        return gp.get_schedule("agp", **options)
    return gp.get_schedule(p.schedule, **p.schedule_options)


IMPORTANCE_BATCHES = 4  # training batches behind each taylor score or sensitivity estimate


def _importance_data(cfg: ExperimentConfig, pruner: Any, data: ImageData) -> Any:
    """A few fixed training batches for taylor importance or sensitivity allocation (or None)."""
    if not (pruner.importance.needs_grad or pruner.allocation == "sensitivity"):
        return None
    loader = train_loader(data, cfg.finetune.batch_size, cfg.seed, augment=False)
    batches = [b for _, b in zip(range(IMPORTANCE_BATCHES), loader, strict=False)]
    return lambda: batches


def allocation_of(cfg: ExperimentConfig) -> str | dict[str, float]:
    """``prune.allocation``: a registered name, or a ``{layer: sparsity}`` JSON file read here.

    Raises:
        UserError: naming ``prune.allocation`` when the file is missing or malformed.
    """
    value = cfg.prune.allocation
    if not value.lower().endswith(".json"):
        return value
    try:
        data = json.loads(Path(value).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"prune.allocation: cannot read {value} ({type(exc).__name__})",
                        "fix the path, or name an allocation such as uniform") from None
    ok = isinstance(data, dict) and all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        and 0 <= v < 1 for k, v in data.items())  # fmt: skip
    if not ok or not data:
        raise UserError(f"prune.allocation: {value} is not a {{layer: sparsity in [0, 1)}} mapping",
                        'write e.g. {"features.3": 0.5}')
    return data


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


TRAINED_FILE = "trained.json"  # in the cell's folder: the fine-tuned result, before timing


def cell_workdir(run_dir: Path, method: str, sparsity: float, matched: bool = False) -> Path:
    return run_dir / CELLS_DIR / cell_name(method, sparsity, matched)


def run_cell(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float,
             data: ImageData | None = None, progress: bool = True, matched: bool = False
             ) -> dict[str, Any]:  # fmt: skip
    """Run one cell and store ``cells/<method>-<sparsity>.json``; returns the record.

    ``matched``: prune to the latency of ``equal_latency.reference`` instead of uniformly to
    ``sparsity`` (stored as ``cells/<method>-latency.json``).

    Two stages, which :func:`gpuprune.experiment.runner.run_experiment` may run apart (the
    training in worker processes, the timing afterwards on a quiet machine):
    :func:`train_cell` then :func:`time_cell`.

    A failure inside the cell (NaN loss, a layer the method cannot prune, a kernel error) is
    stored as ``status: failed`` with the message, so the other cells still run.
    """
    trained = train_cell(cfg, run_dir, method, sparsity, data, progress, matched)
    return time_cell(cfg, run_dir, trained, data)


def _guarded(record: dict[str, Any], stage: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``record`` updated with ``stage()``, or with ``status`` and ``error`` when it fails."""
    try:
        record.update(stage())
    except Unreachable as exc:
        record.update(status="unreachable", error=str(exc))
    except (NonFiniteLossError, UserError) as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # keep the other cells; the record says what broke
        last = traceback.format_exc().strip().splitlines()[-1]
        record.update(status="failed", error=f"internal error: {type(exc).__name__}: {exc}",
                      detail=last)  # fmt: skip
    return record


def trained_before(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float,
                   matched: bool = False) -> dict[str, Any]:  # fmt: skip
    """The cell's stored training result when it is from these settings and its model file is
    intact (then only the timing is left to do), else {}."""
    work = cell_workdir(run_dir, method, sparsity, matched)
    done = read_record(work / TRAINED_FILE)
    model_file = work / "model.safetensors"
    if (done.get("key") == cell_key(cfg, matched) and done.get("status") == "trained"
            and model_file.is_file() and file_sha256(model_file) == done.get("model_sha256")):
        return done  # fmt: skip
    return {}


def train_cell(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float,
               data: ImageData | None = None, progress: bool = True, matched: bool = False,
               plan: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Stage 1: prune, fine-tune, evaluate and save the pruned model (nothing timed).

    Returns the record so far, ``status: trained`` (also stored, checksummed, as the cell
    folder's ``trained.json``, so a rerun only times it) or ``failed``/``unreachable``.
    ``plan``: a matched cell's plan chosen beforehand (see :func:`plan_cell`).
    """
    started = time.perf_counter()
    path = cell_path(run_dir, method, sparsity, matched)
    if ddp.info().is_main and path.exists() and read_record(path).get("key") != cell_key(
            cfg, matched):
        set_aside(path, run_dir / STALE_DIR)  # made by other settings (or damaged): kept aside
    if done := trained_before(cfg, run_dir, method, sparsity, matched):
        return done
    work = cell_workdir(run_dir, method, sparsity, matched)
    record = train_arm(cfg, run_dir, method, sparsity, data, progress, work, matched, plan)
    record["train_seconds"] = time.perf_counter() - started
    if record["status"] == "trained" and ddp.info().is_main:
        record = write_record(work / TRAINED_FILE, record)
    return record


def train_arm(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float,
              data: ImageData | None, progress: bool, work: Path, matched: bool = False,
              plan: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Prune and fine-tune one cell in ``work`` (a grid cell's folder, or a study's arm under
    another recipe): the record, ``status: trained`` with the model's sha256 (rank 0, which
    wrote the model) or ``failed``/``unreachable``; nothing stored, nothing timed."""
    record = _guarded(base_record(cfg, method, sparsity, matched), lambda: {
        **_train(cfg, run_dir, method, sparsity, data, progress, matched, plan, work),
        "status": "trained"})  # fmt: skip
    if record["status"] == "trained" and ddp.info().is_main:
        record["model_sha256"] = file_sha256(work / "model.safetensors")
    return record


def base_record(cfg: ExperimentConfig, method: str, sparsity: float, matched: bool
                ) -> dict[str, Any]:  # fmt: skip
    """What every cell record starts with: its name, settings key and allocation."""
    return {"method": method, "sparsity": sparsity, "key": cell_key(cfg, matched),
            "equal_latency": matched,
            "allocation": MATCHED if matched else cfg.prune.allocation}  # fmt: skip


def matched_plan(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float,
                 data: ImageData) -> dict[str, Any]:  # fmt: skip
    """A matched cell planned ahead (``status: planned`` with its ``plan``), or its final
    record when it cannot be planned (``unreachable``/``failed``; store it with
    :func:`time_cell`)."""
    return _guarded(base_record(cfg, method, sparsity, True), lambda: {
        "plan": plan_cell(cfg, run_dir, method, data), "status": "planned"})  # fmt: skip


def time_cell(cfg: ExperimentConfig, run_dir: Path, trained: dict[str, Any],
              data: ImageData | None = None) -> dict[str, Any]:  # fmt: skip
    """Stage 2: compile the saved pruned model with each backend and time it against the dense
    weights; stores and returns the cell's record (a failed training is stored as it is)."""
    started = time.perf_counter()
    record = dict(trained)
    method, sparsity, matched = record["method"], record["sparsity"], record["equal_latency"]
    if ddp.info().is_main:
        if record.get("status") == "trained":
            record = _guarded(record, lambda: {
                **_time(cfg, run_dir, record, data), "status": "ok"})  # fmt: skip
        record["timing_seconds"] = time.perf_counter() - started
        record["seconds"] = record.get("train_seconds", 0.0) + record["timing_seconds"]
        record = write_record(cell_path(run_dir, method, sparsity, matched), record)
    ddp.barrier()
    return record


def plan_cell(cfg: ExperimentConfig, run_dir: Path, method: str, data: ImageData
              ) -> dict[str, Any]:  # fmt: skip
    """A matched cell's plan, chosen on the dense model (measures latency curves: run it on a
    quiet machine). Raises :class:`Unreachable` when the method cannot reach the reference."""
    model = build_model(cfg, data)
    model.load_state_dict(dense_state(run_dir))
    pruner = _pruner(cfg, model, method, data, matched=True)
    ref = cfg.equal_latency.reference_cell
    try:
        return plan_matched(cfg, model, pruner, data, prunable_layers(cfg, model))
    except BudgetError as exc:
        raise Unreachable(f"{cell_id(method, ref[1] if ref else 0.0, True)} cannot reach the "
                          f"latency of {cfg.equal_latency.reference}: {exc.problem}") from None


def _pruner(cfg: ExperimentConfig, model: nn.Module, method: str, data: ImageData,
            matched: bool) -> Any:  # fmt: skip
    import gpuprune.prune as gp

    p = cfg.prune
    return gp.Pruner(
        model, method, target=p.target, importance=p.importance,
        allocation="plan" if matched else allocation_of(cfg), exclude=p.exclude,
        exclude_first_last=p.exclude_first_last, skip_small=p.skip_small,
        input_size=input_shape(data), method_options=p.method_options.get(method),
        reconstruct=p.reconstruct,
    )  # fmt: skip


def _permute(cfg: ExperimentConfig, pruner: Any, sparsity: float,
             data_for: Any) -> dict[str, Any] | None:  # fmt: skip
    """Reorder channels for the cell's final sparsity (``prune.permute``): the summary, or why
    not (a method whose mask does not rank blocks); None when the option is off."""
    from gpuprune.prune.permute import selection_of

    if not cfg.prune.permute:
        return None
    if selection_of(pruner.method) is None:
        return {"not_applied": f"method {pruner.method.name!r} does not keep the highest-"
                               "scoring blocks: channel order is not searched for it"}  # fmt: skip
    data = data_for() if data_for is not None and pruner.importance.needs_grad else None
    return pruner.permute(sparsity, data=data).summary()


def _train(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float,
           data: ImageData | None, progress: bool, matched: bool,
           plan: dict[str, Any] | None, work: Path) -> dict[str, Any]:  # fmt: skip
    import gpuprune.prune as gp

    data = data if data is not None else load_data(cfg)
    ft_data = data.subset(train=cfg.finetune.train_subset, seed=cfg.seed + 1)
    model = build_model(cfg, data)
    model.load_state_dict(dense_state(run_dir))
    p = cfg.prune
    pruner = _pruner(cfg, model, method, data, matched)
    if matched:  # chosen on the dense model, then reached along the same schedule
        if plan is None:
            plan = plan_cell(cfg, run_dir, method, data)
        pruner.allocation_options["plan"] = plan["plan"]
        sparsity = plan["overall_sparsity"]
    total = _finetune_steps(cfg, ft_data)
    strength = p.ssl_strength if method == "ssl" else 0.0
    rank = ddp.info()  # under torchrun every rank fine-tunes a shard; rank 0 writes and times
    sync = (lambda: ddp.broadcast_module(model)) if rank.enabled else None
    calib = calibration_batches(cfg, ft_data) if needs_calibration(cfg) else None
    data_for = (lambda: calib) if calib else _importance_data(cfg, pruner, ft_data)
    permuted = _permute(cfg, pruner, sparsity, data_for)
    hook = PrunerHook(pruner, schedule_for(cfg, method, total), sparsity, ssl_strength=strength,
                      sync=sync, data=data_for)  # fmt: skip
    if rank.is_main:
        fresh_workdir(work, cell_key(cfg, matched))
    ddp.barrier()
    if total == 0:
        pruner.apply(sparsity, data=hook.data() if hook.data is not None else None)
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
    gp.save_pruned(work / "model.safetensors", model, pruned, model_name=model_spec(cfg, data),
                   extra={"accuracy": result.test_acc})  # fmt: skip
    (work / "checkpoint.pt").unlink(missing_ok=True)  # done: the pruned model file is enough
    per_layer = [{
        "name": lr.name, "shape": list(lr.shape), "block": list(lr.block),
        "sparsity": lr.sparsity, "blocks_kept": lr.blocks_kept,
        "blocks_total": lr.blocks_total, "flops_dense": lr.flops_dense,
        "flops_kept": lr.flops_kept,
    } for lr in pruned.layers]  # fmt: skip
    return {
        **({"matched": plan} if matched else {}),
        "variant": gp.kernel_of(method),  # the kernel the method's pattern runs on
        "accuracy": result.test_acc,
        "test_loss": result.test_loss,
        "achieved_sparsity": pruned.sparsity,
        "flops_kept": pruned.flops_kept,
        "skipped_layers": [s.name for s in pruned.skipped],
        **({"permutation": permuted} if permuted is not None else {}),
        "layers": per_layer,
        "prune_events": hook.events,
        "finetune": {"steps": total, "seconds": result.seconds, "history": result.history},
    }


def _time(cfg: ExperimentConfig, run_dir: Path, record: dict[str, Any],
          data: ImageData | None) -> dict[str, Any]:  # fmt: skip
    import gpuprune.prune as gp
    from gpuprune.latency import cross_target

    data = data if data is not None else load_data(cfg)
    method, sparsity, matched = record["method"], record["sparsity"], record["equal_latency"]
    work = cell_workdir(run_dir, method, sparsity, matched)
    model = gp.load(work / "model.safetensors").model  # masked, exactly as fine-tuned
    kernel = record["variant"]
    p = cfg.prune
    layers = prunable_layers(cfg, model)
    dense = build_model(cfg, data)
    dense.load_state_dict(dense_state(run_dir))
    latency, skip = {}, {}
    for backend in cfg.latency.backends:
        # Paired timing: the dense weights through the same kernel, timed in alternation with
        # the pruned model, so a machine that gets busier or quieter does not skew speedups.
        device = backend_device(backend)
        compiled = compile_for(model, p.target, backend, layers, kernel)
        base, latency[backend] = time_models(
            [compile_for(dense, p.target, backend, layers, kernel), compiled],
            input_shape(data), cfg.latency, cfg.seed, device,
        )  # fmt: skip
        latency[backend]["dense_ms"] = base["median_ms"]
        skip[backend] = skippable(compiled)
    # The report's cross-target view, computed where the model exists; once per method, in the
    # cell at the sparsity nearest the run's headline one.
    headline = cfg.targets.sparsity or 0.75
    crossed = []
    nearest = min(cfg.prune.sparsities_of(method), key=lambda s: abs(s - headline))
    if not matched and sparsity == nearest:
        crossed = cross_target(model.eval(), batch=cfg.latency.batch_size,
                               input_size=input_shape(data), variants=(kernel,))  # fmt: skip
    layers_out = [{**lay, "skippable": {b: skip[b].get(lay["name"], 0.0) for b in skip}}
                  for lay in record["layers"]]  # fmt: skip
    return {"cross_target": crossed, "layers": layers_out, "latency": latency}
