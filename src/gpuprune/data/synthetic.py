"""Synthetic, learnable image data for tests: one random prototype per class plus noise."""

from __future__ import annotations

import math

import torch

from gpuprune.data.base import ImageData, channel_stats
from gpuprune.errors import UserError

# (lowest, highest) of each option: past these a typo would allocate gigabytes
LIMITS = {"train": (1, 1_000_000), "test": (1, 1_000_000), "num_classes": (2, 1000),
          "channels": (1, 64), "size": (4, 1024)}  # fmt: skip


def _check(options: dict[str, object]) -> None:
    for name, (lo, hi) in LIMITS.items():
        v = options[name]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise UserError(f"data.options.{name}: must be an integer in {lo}..{hi} (got {v!r})",
                            f"fix data.options.{name} (synthetic data)")  # fmt: skip
    noise = options["noise"]
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not (
            math.isfinite(noise) and 0 <= noise <= 10):  # fmt: skip
        raise UserError(f"data.options.noise: must be a number in 0..10 (got {noise!r})",
                        "fix data.options.noise (synthetic data)")


def make_synthetic(
    train: int = 512,
    test: int = 256,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 16,
    noise: float = 0.35,
    seed: int = 0,
) -> ImageData:
    """Images whose class is visible in a smooth per-class pattern under Gaussian noise.

    Args:
        train: train images.
        test: test images.
        num_classes: classes.
        channels: image channels.
        size: height and width.
        noise: noise std relative to the pattern's range; higher makes the task harder.
        seed: generator seed (same seed, same data).
    """
    _check({"train": train, "test": test, "num_classes": num_classes, "channels": channels,
            "size": size, "noise": noise})  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    protos = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=gen)]
        x = protos[y] + noise * torch.randn(n, channels, size, size, generator=gen)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    tx, ty = split(train)
    vx, vy = split(test)
    mean, std = channel_stats(tx)
    return ImageData(
        "synthetic", tx, ty, vx, vy, num_classes=num_classes, mean=mean, std=std,
        crop_pad=1, flip=False, source=f"synthetic(seed={seed})",
    )  # fmt: skip
