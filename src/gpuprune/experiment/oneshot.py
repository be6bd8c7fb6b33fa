"""The one-shot study: the dense model pruned once per (method, sparsity, importance), no training.

It shows what a user who cannot fine-tune gets: magnitude pruning against OBS reconstruction
(``obs``), each optionally followed by batch-norm recalibration. Every cell prunes uniformly,
so the importances are compared on the same per-layer sparsities. Stored in ``oneshot.json``;
rerunning with the same settings reads it back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from gpuprune.data import ImageData
from gpuprune.errors import UserError
from gpuprune.experiment.cell import DENSE_DIR, build_model, calibration_batches, input_shape
from gpuprune.experiment.config import ExperimentConfig
from gpuprune.fileio import read_record, write_record
from gpuprune.gemm import K_ORDER
from gpuprune.progress import progress_bar

ONESHOT_FILE = "oneshot.json"


def oneshot_key(cfg: ExperimentConfig) -> str:
    """What the one-shot rows depend on."""
    keep = {"target", "exclude", "exclude_first_last", "skip_small", "method_options",
            "calibration"}  # fmt: skip
    return cfg.digest("data", "model", "dense", "seed", "oneshot", k_order=K_ORDER,
                      prune=cfg.prune.model_dump(include=keep))  # fmt: skip


def oneshot_done(cfg: ExperimentConfig, run_dir: Path) -> bool:
    """True when the study is off, or stored complete from these settings."""
    return not cfg.oneshot.methods or _complete(read_record(run_dir / ONESHOT_FILE), cfg)


def _complete(record: dict[str, Any], cfg: ExperimentConfig) -> bool:
    return record.get("key") == oneshot_key(cfg) and record.get("complete", True)


def _one(cfg: ExperimentConfig, run_dir: Path, data: ImageData, calib: list[Any], bn: list[Any],
         method: str, sparsity: float, importance: str) -> dict[str, Any]:  # fmt: skip
    import gpuprune.prune as gp
    from gpuprune.train import evaluate

    p, o = cfg.prune, cfg.oneshot
    row: dict[str, Any] = {"method": method, "sparsity": sparsity, "importance": importance}
    model = build_model(cfg, data)
    model.load_state_dict(load_file(str(run_dir / DENSE_DIR / "model.safetensors")))
    started = time.perf_counter()
    try:
        pruner = gp.Pruner(model, method, target=p.target, importance=importance,
                           exclude=p.exclude, exclude_first_last=p.exclude_first_last,
                           skip_small=p.skip_small, input_size=input_shape(data),
                           method_options=p.method_options.get(method))  # fmt: skip
        result = pruner.apply(sparsity, data=calib, max_batches=len(calib))
    except UserError as exc:
        return {**row, "status": "failed", "error": str(exc)}
    row["prune_seconds"] = time.perf_counter() - started
    row["achieved_sparsity"] = result.sparsity
    row["accuracy"] = evaluate(model, data, cfg.finetune.eval_batch_size)[1]
    if bn and gp.recalibrate_bn(model, bn, o.bn_batches):
        row["accuracy_bn"] = evaluate(model, data, cfg.finetune.eval_batch_size)[1]
    return {**row, "status": "ok"}


def run_oneshot(cfg: ExperimentConfig, run_dir: Path, data: ImageData,
                progress: bool = True) -> dict[str, Any] | None:  # fmt: skip
    """Run (or read back) the one-shot study; None when ``oneshot.methods`` is empty."""
    o = cfg.oneshot
    if not o.methods:
        return None
    path = run_dir / ONESHOT_FILE
    key = oneshot_key(cfg)
    done = read_record(path)
    if _complete(done, cfg):
        return done
    # an interrupted study keeps its finished rows (each row is stored as soon as it is done)
    prior = {(r.get("method"), r.get("sparsity"), r.get("importance")): r
             for r in done.get("rows", []) if r.get("status") == "ok"
             } if done.get("key") == key else {}  # fmt: skip
    started = time.perf_counter()
    calib = calibration_batches(cfg, data)
    bn = calibration_batches(cfg, data, o.bn_batches * 128) if o.bn_batches else []
    data = data.subset(test=o.test_images, seed=cfg.seed)  # the images every row is read on
    dense_acc = None
    if o.test_images is not None:  # the dense model on the same images, for "recovered"
        from gpuprune.train import evaluate

        model = build_model(cfg, data)
        model.load_state_dict(load_file(str(run_dir / DENSE_DIR / "model.safetensors")))
        dense_acc = evaluate(model, data, cfg.finetune.eval_batch_size)[1]
    cells = [(m, s, i) for m in o.methods for s in o.sparsities for i in o.importances]
    record: dict[str, Any] = {"key": key, "calibration_images": sum(len(b[1]) for b in calib),
                              "test_images": len(data.test_y), "dense_accuracy": dense_acc,
                              "rows": [],
                              "complete": False}  # fmt: skip
    with progress_bar("one-shot {task.description}", disable=not progress) as bar:
        task = bar.add_task("", total=len(cells))
        for method, sparsity, importance in cells:
            bar.update(task, description=f"{method}@{sparsity:g} {importance}")
            row = prior.get((method, sparsity, importance)) or _one(
                cfg, run_dir, data, calib, bn, method, sparsity, importance)
            record["rows"].append(row)
            write_record(path, record)
            bar.advance(task)
    record.update(complete=True, seconds=time.perf_counter() - started)
    return write_record(path, record)
