"""The training recipe: a small frozen dataclass, shared by dense training and fine-tuning."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from gpuprune.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    """One training run's recipe; every field has a default that suits a short CPU run."""

    epochs: int = 10  # passes over the (possibly cut) train split
    batch_size: int = 128  # images per step, per rank
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum (Nesterov)
    weight_decay: float = 5e-4  # L2 on all parameters
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"  # lr shape over all steps
    warmup: float = 0.0  # fraction of steps with linear warm-up (cosine); onecycle uses 0.25
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    augment: bool = True  # random crop (and flip where the data set uses it)
    steps_per_epoch: int | None = None  # cut each epoch to this many steps (None: whole split)
    eval_batch_size: int = 512  # images per evaluation batch
    eval_each_epoch: bool = True  # False: the test set only after the last epoch (same result)
    amp: bool | None = None  # mixed precision; None: on GPU only
    channels_last: bool | None = None  # NHWC memory format; None: on GPU only
    seed: int = 0  # seeds init-independent randomness: data order, augmentation
    distill_alpha: float = 0.0  # weight of the teacher's soft targets (0: no distillation)
    distill_temperature: float = 4.0  # softmax temperature of the distillation term

    def __post_init__(self) -> None:
        checks = {  # name: (holds, the allowed values in words)
            "epochs": (self.epochs >= 0, ">= 0"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "lr": (self.lr > 0 and math.isfinite(self.lr), "a finite number > 0"),
            "momentum": (0 <= self.momentum < 1, "in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "warmup": (0 <= self.warmup < 1, "in [0, 1)"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
            "steps_per_epoch": (self.steps_per_epoch is None or self.steps_per_epoch >= 1,
                                ">= 1 or unset"),
            "eval_batch_size": (self.eval_batch_size >= 1, ">= 1"),
            "schedule": (self.schedule in ("cosine", "onecycle", "constant"),
                         "cosine, onecycle or constant"),
            "distill_alpha": (0 <= self.distill_alpha <= 1, "in [0, 1]"),
            "distill_temperature": (self.distill_temperature > 0, "> 0"),
        }  # fmt: skip
        for name, (ok, allowed) in checks.items():
            if not ok:
                flag = "--" + name.replace("_", "-")
                raise UserError(
                    f"training setting {name}={getattr(self, name)!r} is out of range",
                    f"{name} must be {allowed} ({flag} of gpuprune train, or the {name} key of "
                    "the config's dense/finetune section)",
                )


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean.

    The ``T^2`` keeps the gradient scale of the soft term independent of the temperature.
    """
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)  # fmt: skip


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate at ``step`` of ``total``: a pure function, so resuming needs no state."""
    t = step / max(total, 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "onecycle":  # linear up for 25% of steps, then cosine down (Smith 2018)
        up = 0.25
        if t < up:
            return cfg.lr * (0.1 + 0.9 * t / up)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (t - up) / (1 - up)))
    if t < cfg.warmup:
        return cfg.lr * (step + 1) / max(cfg.warmup * total, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (t - cfg.warmup) / (1 - cfg.warmup)))
