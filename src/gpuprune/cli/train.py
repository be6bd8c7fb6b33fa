"""``gpuprune train``: train a dense model; run it under ``torchrun`` for data parallelism."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click
import torch
from safetensors.torch import save

from gpuprune.data import load_dataset
from gpuprune.errors import UserError
from gpuprune.fileio import (
    atomic_write_bytes,
    atomic_write_text,
    check_output,
    dir_lock,
    own_folder,
    read_record,
    write_record,
)
from gpuprune.models import create_model
from gpuprune.train import TrainConfig, fit
from gpuprune.train import distributed as ddp

SETTINGS = "settings.json"  # the flags of the run in this folder: --resume must match them
FLAGS = {"model": "--model", "width": "--width", "data": "--data", "data_root": "--data-root",
         "train_subset": "--train-subset", "epochs": "--epochs", "batch_size": "--batch-size",
         "lr": "--lr", "schedule": "--schedule", "label_smoothing": "--label-smoothing",
         "seed": "--seed"}  # fmt: skip


def _check_reuse(out_dir: Path, settings: dict, resume: bool, force: bool) -> None:
    """Never replace a run silently: a finished or started run needs --resume or --force."""
    if force:
        return
    if not resume:
        for name, state in (("summary.json", "a finished"), ("checkpoint.pt", "an unfinished")):
            if (out_dir / name).exists():
                raise UserError(f"training folder {out_dir} holds {state} run",
                                "pass --resume to continue it, --force to train again "
                                "(replacing it), or another -o")  # fmt: skip
        return
    stored = read_record(out_dir / SETTINGS)
    diff = [k for k in FLAGS if k in stored and stored[k] != settings[k]]
    if diff:
        k = diff[0]
        raise UserError(f"--resume: the run in {out_dir} used {FLAGS[k]} {stored[k]}, "
                        f"not {settings[k]}",
                        "pass the original settings, --force to train again, or another -o")


@click.command("train")
@click.option("--model", "model_name", default="vgg16", show_default=True,
              help="Registered model or package.module:factory.")
@click.option("--width", type=click.FloatRange(0, 64, min_open=True), default=1.0,
              show_default=True, help="Channel width multiplier.")  # fmt: skip
@click.option("--data", "dataset", default="fashion-mnist", show_default=True,
              help="fashion-mnist, cifar10 or synthetic.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Local data file or folder.")
@click.option("--train-subset", type=click.IntRange(min=1), default=None,
              help="Use this many train images.")
@click.option("--epochs", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 65536), default=128, show_default=True,
              help="Images per step and rank.")
@click.option("--lr", type=click.FloatRange(0, 100, min_open=True), default=0.05,
              show_default=True)  # fmt: skip
@click.option("--schedule", type=click.Choice(["cosine", "onecycle", "constant"]),
              default="cosine", show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              show_default=True)  # fmt: skip
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Run folder: checkpoint.pt, metrics.jsonl, model.safetensors.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--force", is_flag=True, help="Train again in OUT, replacing the run there.")
def train(model_name: str, width: float, dataset: str, data_root: Path | None,
          train_subset: int | None, epochs: int, batch_size: int, lr: float, schedule: str,
          label_smoothing: float, seed: int, out_dir: Path, resume: bool,
          force: bool) -> None:  # fmt: skip
    """Train a model from scratch (data-parallel under torchrun --nproc-per-node N)."""
    if resume and force:
        raise UserError("--resume and --force contradict each other", "pass one of them")
    settings = {"model": model_name, "width": width, "data": dataset,
                "data_root": str(data_root) if data_root else None, "train_subset": train_subset,
                "epochs": epochs, "batch_size": batch_size, "lr": lr, "schedule": schedule,
                "label_smoothing": label_smoothing, "seed": seed}  # fmt: skip
    check_output(out_dir, flag="-o", folder=True)
    rank = ddp.setup()
    held = contextlib.ExitStack()
    try:
        if rank.is_main:  # one training per folder: two would overwrite each other's checkpoint
            own_folder(out_dir, "training folder", "pass a new or empty folder to -o",
                       legacy=(".lock", "checkpoint.pt"))  # fmt: skip
            held.enter_context(dir_lock(out_dir, "training folder"))
            _check_reuse(out_dir, settings, resume, force)
            write_record(out_dir / SETTINGS, settings)
        data = load_dataset(dataset, root=data_root, train_subset=train_subset, seed=seed)
        torch.manual_seed(seed)
        model = create_model(model_name, data.num_classes, data.in_channels, width)
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
                          label_smoothing=label_smoothing, seed=seed)  # type: ignore[arg-type]
        result = fit(model, data, cfg, run_dir=out_dir, resume=resume)
        if rank.is_main:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            atomic_write_bytes(out_dir / "model.safetensors", save(state))
            summary = {"model": model_name, "width": width, "data": dataset,
                       "world_size": rank.world_size, "test_acc": result.test_acc,
                       "test_loss": result.test_loss, "seconds": result.seconds}  # fmt: skip
            atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
            click.echo(f"test accuracy {result.test_acc:.2%}; wrote {out_dir}")
    finally:
        held.close()
        ddp.cleanup()
