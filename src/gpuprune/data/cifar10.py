"""CIFAR-10 (Krizhevsky 2009) from the python tarball: local folder, local tarball or download."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from gpuprune.data.base import ImageData
from gpuprune.data.download import cache_dir, fetch, md5sum
from gpuprune.errors import UserError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TARBALL = "cifar-10-python.tar.gz"
TARBALL_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a batch file can never run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }  # fmt: skip

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data batch")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # The official format is a pickle of numpy arrays: read with an unpickler that builds only
    # arrays, lists and numbers, so a hostile file fails instead of running code.
    try:
        with open(path, "rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # any decoding failure means a damaged or foreign file
        raise UserError(
            f"{path} is not a CIFAR-10 batch ({type(exc).__name__}: {str(exc)[:80]})",
            f"replace the folder with the original {TARBALL} contents",
        ) from None
    if len(x) != len(y):
        raise UserError(f"{path} has {len(x)} images but {len(y)} labels", "replace the file")
    return x, y


def _batches_folder(path: Path) -> Path | None:
    for folder in (path, path / FOLDER):
        if all((folder / b).is_file() for b in (*TRAIN_BATCHES, "test_batch")):
            return folder
    return None


def _extract(tarball: Path, into: Path) -> Path:
    if md5sum(tarball) != TARBALL_MD5:
        raise UserError(
            f"{tarball} has the wrong checksum (expected md5 {TARBALL_MD5})",
            f"download it again from {URL}",
        )
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(into, filter="data")
    return into / FOLDER


def _locate(root: Path | None, download: bool) -> Path:
    if root is not None:
        if root.is_file():
            return _extract(root, cache_dir("cifar10"))
        folder = _batches_folder(root)
        if folder is not None:
            return folder
        if (root / TARBALL).is_file():
            return _extract(root / TARBALL, root)
        raise UserError(
            f"CIFAR-10 not found in {root}",
            f"point data.root at {TARBALL} or the extracted {FOLDER} folder",
        )
    cache = cache_dir("cifar10")
    folder = _batches_folder(cache)
    if folder is not None:
        return folder
    if not download:
        raise UserError(
            f"CIFAR-10 not found in {cache}",
            f"download {URL} and set data.root to it, or allow the download",
        )
    try:
        tarball = fetch(URL, cache / TARBALL, TARBALL_MD5, timeout=60)
    except UserError as exc:
        raise UserError(
            f"CIFAR-10 not found in {cache} and the download failed: {exc.problem}",
            f"download {URL} elsewhere and set data.root to the tarball",
        ) from None
    return _extract(tarball, cache)


def load_cifar10(root: str | Path | None = None, download: bool = True) -> ImageData:
    """Load CIFAR-10: 50k train and 10k test 32x32 RGB images, 10 classes.

    Args:
        root: the tarball, a folder holding it, or the extracted ``cifar-10-batches-py``;
            ``None`` uses the cache and downloads (with checksum) when allowed.
        download: allow the download when nothing is found locally.
    """
    folder = _locate(Path(root) if root is not None else None, download)
    parts = [_read_batch(folder / b) for b in TRAIN_BATCHES]
    tx = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    ty = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    vx_np, vy_np = _read_batch(folder / "test_batch")
    return ImageData(
        "cifar10", tx, ty, torch.from_numpy(vx_np), torch.from_numpy(vy_np), num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        crop_pad=4, flip=True, source=str(folder),
    )  # fmt: skip
