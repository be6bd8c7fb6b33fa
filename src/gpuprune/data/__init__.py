"""Data sets held whole in memory, and a batch loader that augments on whole batches.

``load_dataset("fashion-mnist")`` reads Debian's ``dataset-fashion-mnist`` files when installed;
``load_dataset("cifar10", root=...)`` reads a local tarball or folder, or downloads it;
``load_dataset("synthetic")`` makes a small learnable set for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuprune.data.base import ImageData, channel_stats
from gpuprune.data.cifar10 import load_cifar10
from gpuprune.data.fashion_mnist import load_fashion_mnist
from gpuprune.data.loader import BatchLoader, eval_loader, train_loader
from gpuprune.data.synthetic import make_synthetic
from gpuprune.errors import UserError
from gpuprune.registry import Registry

DATASETS: Registry[Callable[..., ImageData]] = Registry("dataset")
DATASETS.add("fashion-mnist", load_fashion_mnist)
DATASETS.add("cifar10", load_cifar10)
DATASETS.add("synthetic", lambda root=None, download=True, **kw: make_synthetic(**kw))


def load_dataset(
    name: str,
    root: str | Path | None = None,
    download: bool = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    **options: Any,
) -> ImageData:
    """Load a registered data set, optionally cut to class-balanced subsets.

    Args:
        name: "fashion-mnist", "cifar10", "synthetic" or a name added to ``DATASETS``.
        root: local file or folder to read instead of the default places.
        download: allow downloading when nothing is found locally.
        train_subset: keep this many train images (``None``: all).
        test_subset: keep this many test images (``None``: all).
        seed: seed of the subset choice.
        **options: passed to the loader (e.g. ``size`` for "synthetic").
    """
    loader = DATASETS.get(name)
    try:
        data = loader(root=root, download=download, **options)
    except TypeError as exc:  # an option the loader does not take (a typo in data.options)
        if "argument" not in str(exc):
            raise
        raise UserError(
            f"data set {name!r}: bad options {sorted(options)} ({exc})",
            "fix data.options (see the loader's docstring)",
        ) from None
    return data.subset(train_subset, test_subset, seed=seed)


__all__ = [
    "DATASETS",
    "BatchLoader",
    "ImageData",
    "channel_stats",
    "eval_loader",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "make_synthetic",
    "train_loader",
]
