"""The training loop: dense training and pruned fine-tuning, single process or data-parallel.

Read top to bottom: set up, maybe resume, then per epoch train (with the pruning hook), evaluate,
reduce the metrics over ranks, and on rank 0 write the metrics and an atomic checkpoint. A
checkpoint holds the model, optimizer, hook (masks, sparsity), RNG state and history; data order
and augmentation are seeded by (seed, epoch) and the learning rate is a function of the step, so a
resumed run repeats an uninterrupted one exactly on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import Progress, TextColumn
from torch import nn

from gpuprune.data import ImageData, eval_loader, train_loader
from gpuprune.errors import UserError
from gpuprune.fileio import atomic_open, atomic_write_text
from gpuprune.progress import progress_bar
from gpuprune.train import distributed as ddp
from gpuprune.train.config import TrainConfig, distill_loss, lr_at
from gpuprune.train.hooks import TrainHook
from gpuprune.train.layout import inference_layout

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite: the recipe diverged."""


@dataclass
class TrainResult:
    """What a finished run reports; ``history`` has one dict per epoch (also in metrics.jsonl)."""

    test_acc: float
    test_loss: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", ddp.info().local_rank)
    return torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ImageData, batch_size: int = 512, device: torch.device | None = None
) -> tuple[float, float]:
    """Test loss and accuracy (in [0, 1]) over the whole test split, reduced across ranks."""
    device = device or next(model.parameters()).device
    rank = ddp.info()
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    with inference_layout(model):
        for x, y in eval_loader(data, batch_size, rank.rank, rank.world_size, device):
            out = model(x).float()
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += float((out.argmax(1) == y).sum())
            count += len(y)
    model.train(was_training)
    loss_sum, correct, count = ddp.all_reduce_sum([loss_sum, correct, count], device)
    return loss_sum / max(count, 1), correct / max(count, 1)


def _progress(enabled: bool) -> Progress:
    return progress_bar(
        "{task.description}",
        TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.1%}"),
        TextColumn("{task.fields[rate]:,.0f} img/s"),
        disable=not enabled,
        transient=False,
    )


def _recipe_key(cfg: TrainConfig) -> dict[str, Any]:
    key = asdict(cfg)
    key.pop("eval_each_epoch")  # when the test set is read does not change the weights
    return key


_CHECKPOINT_KEYS = {"epoch", "model", "optimizer", "hook", "rng", "history", "config"}


def _load_checkpoint(path: Path, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    from gpuprune.prune.files import torch_load

    fix = f"delete {path} to start this phase again"
    try:
        state = torch_load(path, map_location=device)  # weights_only, zip CRCs checked
    except UserError as exc:
        raise UserError(exc.problem, fix) from None
    except Exception as exc:  # truncated, or holds more than tensors and plain containers
        raise UserError(f"checkpoint {path} is unreadable ({type(exc).__name__})", fix) from None
    if not isinstance(state, dict) or not state.keys() >= _CHECKPOINT_KEYS:
        raise UserError(f"{path} is not a gpuprune training checkpoint", fix)
    saved = state.get("config", {})
    diff = [k for k, v in _recipe_key(cfg).items() if saved.get(k) != v]
    if diff:
        raise UserError(
            f"checkpoint {path} was written with a different recipe ({', '.join(diff)})",
            "restore the original settings or use a new run folder",
        )
    return state


def fit(
    model: nn.Module,
    data: ImageData,
    cfg: TrainConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    hook: TrainHook | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "train",
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` with ``cfg``; returns the final test metrics.

    Args:
        model: the network (its initial weights are the caller's; this seeds only data order).
        data: train and test splits.
        cfg: the recipe.
        run_dir: where rank 0 writes ``checkpoint.pt`` (each epoch, atomically) and
            ``metrics.jsonl``; ``None`` writes nothing.
        resume: continue from ``run_dir/checkpoint.pt`` if it exists.
        hook: pruning schedule / masks / penalty (see :mod:`gpuprune.train.hooks`).
        device: defaults to this rank's GPU, else the CPU.
        progress: show a progress bar (rank 0 only).
        desc: label of the progress bar.
        teacher: the model to distil from when ``cfg.distill_alpha > 0`` (e.g. the dense one);
            it runs in eval mode without gradients on every rank and is never wrapped in DDP.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    rank = ddp.info()
    device = torch.device(device) if device is not None else default_device()
    on_gpu = device.type == "cuda"
    use_amp = on_gpu if cfg.amp is None else cfg.amp and on_gpu
    channels_last = on_gpu if cfg.channels_last is None else cfg.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=fmt)
    if hook is not None and hasattr(hook, "prepare"):
        hook.prepare(model)  # e.g. create mask parametrizations before DDP sees the weights
    net: nn.Module = model
    if rank.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if on_gpu else None)

    loader = train_loader(data, cfg.batch_size, cfg.seed, cfg.augment, rank.rank,
                          rank.world_size, device)  # fmt: skip
    steps = len(loader) if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, len(loader))
    if steps == 0:
        raise UserError(
            f"batch_size={cfg.batch_size} x {rank.world_size} rank(s) exceeds the "
            f"{len(data.train_y)} train images",
            "lower batch_size or use more train images",
        )
    total = cfg.epochs * steps
    if cfg.distill_alpha > 0:
        if teacher is None:
            raise UserError("distillation is on (distill_alpha > 0) but no teacher was given",
                            "pass teacher= the dense model, or set distill_alpha to 0")  # fmt: skip
        teacher.to(device=device, memory_format=fmt).eval().requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)  # fmt: skip

    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = _load_checkpoint(ckpt, cfg, device)
        if hook is not None:  # first: restoring masks creates the parametrized weights
            hook.load_state_dict(state["hook"])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"].cpu())
        history, start_epoch = list(state["history"]), int(state["epoch"])
    else:
        torch.manual_seed(cfg.seed)

    t_start = time.perf_counter()
    with _progress(progress and rank.is_main) as bar:
        task = bar.add_task(desc, total=total, completed=start_epoch * steps, loss=0.0, acc=0.0,
                            rate=0.0)  # fmt: skip
        for epoch in range(start_epoch, cfg.epochs):
            loader.set_epoch(epoch)
            net.train()
            loss_sum = correct = seen = 0.0
            t_epoch = time.perf_counter()
            for i, (x, y) in enumerate(loader):
                if i == steps:
                    break
                step = epoch * steps + i
                if hook is not None:
                    hook.before_step(model, step, total)
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, step, total)
                x = x.contiguous(memory_format=fmt)
                autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if use_amp
                            else contextlib.nullcontext())  # fmt: skip
                with autocast:
                    out = net(x)
                    loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
                    if cfg.distill_alpha > 0:
                        with torch.no_grad():
                            soft = teacher(x).float()
                        kd = distill_loss(out.float(), soft, cfg.distill_temperature)
                        loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
                full_loss = loss
                if hook is not None and (extra := hook.penalty(model)) is not None:
                    full_loss = loss + extra
                if not math.isfinite(value := float(full_loss.detach())):
                    raise NonFiniteLossError(
                        f"loss became {value} at epoch {epoch + 1} "
                        f"step {i + 1} ({desc})",
                        "lower the learning rate (lr) or the regularisation weight",
                    )
                opt.zero_grad(set_to_none=True)
                full_loss.backward()
                opt.step()
                if hook is not None:
                    hook.after_step(model)
                loss_sum += float(loss.detach()) * len(y)
                correct += float((out.argmax(1) == y).sum())
                seen += len(y)
                rate = seen * rank.world_size / (time.perf_counter() - t_epoch)
                bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen, rate=rate,
                           description=f"{desc} {epoch + 1}/{cfg.epochs}")  # fmt: skip
            train_time = time.perf_counter() - t_epoch
            loss_sum, correct, seen = ddp.all_reduce_sum([loss_sum, correct, seen], device)
            test_loss = test_acc = None  # not measured (eval_each_epoch off, not the last)
            if cfg.eval_each_epoch or epoch + 1 == cfg.epochs:
                test_loss, test_acc = evaluate(model, data, cfg.eval_batch_size, device)
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1),
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": lr_at(cfg, min((epoch + 1) * steps, total) - 1, total),
                "images": int(seen),
                "images_per_s": seen / max(train_time, 1e-9),
                "seconds": train_time,
                "sparsity": getattr(hook, "sparsity", 0.0) if hook is not None else 0.0,
            }
            history.append(record)
            if ckpt is not None and rank.is_main:
                _write(ckpt, model, opt, hook, cfg, epoch + 1, history)
            ddp.barrier()

    model.to(memory_format=torch.contiguous_format)
    if history:
        last = history[-1]
        return TrainResult(last["test_acc"], last["test_loss"], time.perf_counter() - t_start,
                           history)  # fmt: skip
    test_loss, test_acc = evaluate(model, data, cfg.eval_batch_size, device)
    return TrainResult(test_acc, test_loss, time.perf_counter() - t_start, history)


def _write(path: Path, model: nn.Module, opt: torch.optim.Optimizer, hook: TrainHook | None,
           cfg: TrainConfig, epoch: int, history: list[dict[str, Any]]) -> None:  # fmt: skip
    state = {
        "epoch": epoch,
        "model": {k: v.contiguous() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "hook": hook.state_dict() if hook is not None else {},
        "rng": torch.get_rng_state(),
        "history": history,
        "config": _recipe_key(cfg),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)
    lines = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write_text(path.parent / METRICS, lines)
