"""``gpuprune train``: train a dense model; run it under ``torchrun`` for data parallelism."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click
import torch
from safetensors.torch import save

from gpuprune.data import load_dataset
from gpuprune.fileio import atomic_write_bytes, atomic_write_text, dir_lock
from gpuprune.models import create_model
from gpuprune.train import TrainConfig, fit
from gpuprune.train import distributed as ddp


@click.command("train")
@click.option("--model", "model_name", default="vgg16", show_default=True,
              help="Registered model or package.module:factory.")
@click.option("--width", default=1.0, show_default=True, help="Channel width multiplier.")
@click.option("--data", "dataset", default="fashion-mnist", show_default=True,
              help="fashion-mnist, cifar10 or synthetic.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Local data file or folder.")
@click.option("--train-subset", type=click.IntRange(min=1), default=None,
              help="Use this many train images.")
@click.option("--epochs", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Images per step and rank.")
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "onecycle", "constant"]),
              default="cosine", show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Run folder: checkpoint.pt, metrics.jsonl, model.safetensors.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
def train(model_name: str, width: float, dataset: str, data_root: Path | None,
          train_subset: int | None, epochs: int, batch_size: int, lr: float, schedule: str,
          label_smoothing: float, seed: int, out_dir: Path, resume: bool) -> None:  # fmt: skip
    """Train a model from scratch (data-parallel under torchrun --nproc-per-node N)."""
    rank = ddp.setup()
    held = contextlib.ExitStack()
    try:
        if rank.is_main:  # one training per folder: two would overwrite each other's checkpoint
            held.enter_context(dir_lock(out_dir, "training folder"))
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
