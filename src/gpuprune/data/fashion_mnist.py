"""Fashion-MNIST (Xiao et al. 2017) from IDX files: Debian package, local folder or download."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from gpuprune.data.base import ImageData
from gpuprune.data.download import cache_dir, fetch
from gpuprune.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist
URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
# Upstream md5 of the gzipped files (Debian's copies are re-compressed, so they are not checked).
FILES = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:  # not gzip, or a cut download
        raise UserError(
            f"{path} is unreadable ({exc})", "replace it with the original file"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not a uint8 IDX file", "replace it with the original file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated", "replace it with the original file")
    return body.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _locate(root: Path | None, download: bool) -> tuple[dict[str, Path], str]:
    candidates = [root] if root is not None else [DEBIAN_DIR, cache_dir("fashion-mnist")]
    for folder in candidates:
        found = {stem: _find(folder, stem) for stem in FILES}
        if all(found.values()):
            return found, str(folder)  # type: ignore[return-value]
    if root is not None:
        raise UserError(
            f"Fashion-MNIST IDX files not found in {root}",
            f"put {', '.join(s + '.gz' for s in FILES)} there",
        )
    where = f"{DEBIAN_DIR} (Debian package dataset-fashion-mnist) or {cache_dir('fashion-mnist')}"
    if not download:
        raise UserError(
            f"Fashion-MNIST not found in {where}",
            "install it with 'apt-get install dataset-fashion-mnist' or set data.root",
        )
    folder = cache_dir("fashion-mnist")
    try:
        paths = {s: fetch(URL + s + ".gz", folder / (s + ".gz"), md5) for s, md5 in FILES.items()}
    except UserError as exc:
        raise UserError(
            f"Fashion-MNIST not found in {where} and the download failed: {exc.problem}",
            "install it with 'apt-get install dataset-fashion-mnist' or set data.root",
        ) from None
    return paths, URL


def load_fashion_mnist(root: str | Path | None = None, download: bool = True) -> ImageData:
    """Load Fashion-MNIST: 60k train and 10k test 28x28 gray images, 10 classes.

    Args:
        root: a folder with the four IDX files (gzipped or not); ``None`` looks in Debian's
            ``/usr/share/datasets/fashion-mnist``, then the cache, then downloads.
        download: allow the download when nothing is found locally.
    """
    paths, source = _locate(Path(root) if root is not None else None, download)
    arrays = {stem: read_idx(p) for stem, p in paths.items()}
    for stem, array in arrays.items():  # a valid IDX file may still hold the wrong thing
        want = "(N, 28, 28)" if "images" in stem else "(N,)"
        ok = array.shape[1:] == (28, 28) if "images" in stem else array.ndim == 1
        if not ok:
            raise UserError(f"{paths[stem]} holds an array of shape {array.shape}, not {want}",
                            "replace it with the original Fashion-MNIST file")  # fmt: skip
        if "labels" in stem and array.size and int(array.max()) > 9:
            raise UserError(f"{paths[stem]} holds label {int(array.max())} (Fashion-MNIST has "
                            "0..9)", "replace it with the original Fashion-MNIST file")
    tx = torch.from_numpy(arrays["train-images-idx3-ubyte"].copy()).unsqueeze(1)
    vx = torch.from_numpy(arrays["t10k-images-idx3-ubyte"].copy()).unsqueeze(1)
    ty = torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64))
    vy = torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    if len(tx) != len(ty) or len(vx) != len(vy):
        raise UserError(f"image and label counts differ in {source}", "replace the IDX files")
    # Fixed statistics of the full train split, so subsets normalise the same way.
    return ImageData(
        "fashion-mnist", tx, ty, vx, vy, num_classes=10, mean=(0.2860,), std=(0.3530,),
        crop_pad=2, flip=True, source=source,
    )  # fmt: skip
