"""Data sources: IDX and CIFAR parsing, local folders, checksummed downloads, offline messages."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gpuprune.data import cifar10, fashion_mnist, load_dataset, make_synthetic
from gpuprune.data.download import fetch
from gpuprune.errors import UserError


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    body = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(body)
    else:
        path.write_bytes(body)


def _fake_fashion(folder: Path, n_train: int = 30, n_test: int = 20, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{split}-images-idx3-ubyte{suffix}",
                   rng.integers(0, 256, (n, 28, 28)), compress)  # fmt: skip
        _write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_local_folder(tmp_path: Path, compress: bool) -> None:
    _fake_fashion(tmp_path, compress=compress)
    data = load_dataset("fashion-mnist", root=tmp_path)
    assert data.train_x.shape == (30, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.test_y.tolist() == [i % 10 for i in range(20)]
    assert data.in_channels == 1 and data.num_classes == 10


def test_idx_errors_are_user_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")  # float32 type code
    with pytest.raises(UserError, match="not a uint8 IDX"):
        fashion_mnist.read_idx(bad)
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")  # says 5, holds 2
    with pytest.raises(UserError, match="truncated"):
        fashion_mnist.read_idx(bad)


def test_fashion_mnist_offline_names_the_package(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setenv("GPUPRUNE_DATA", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="dataset-fashion-mnist") as exc:
        load_dataset("fashion-mnist", download=False)
    assert "\n" not in str(exc.value)
    monkeypatch.setattr(fashion_mnist, "URL", "http://127.0.0.1:9/")  # nothing listens on port 9
    with pytest.raises(UserError, match="download failed.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    with pytest.raises(UserError, match=str(tmp_path / "missing")):
        load_dataset("fashion-mnist", root=tmp_path / "missing")


def test_fetch_checks_the_checksum(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    good = hashlib.md5(b"payload").hexdigest()
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch(src.as_uri(), dest, "0" * 32)
    assert not dest.exists()
    assert fetch(src.as_uri(), dest, good).read_bytes() == b"payload"
    src.unlink()  # already there with the right checksum: no second download
    assert fetch(src.as_uri(), dest, good) == dest


def _fake_cifar(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in (*cifar10.TRAIN_BATCHES, "test_batch"):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 b"labels": [0, 1, 2, 3]}  # fmt: skip
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)


def test_cifar10_from_folder_and_tarball(tmp_path: Path, monkeypatch) -> None:
    _fake_cifar(tmp_path / "src" / cifar10.FOLDER)
    data = load_dataset("cifar10", root=tmp_path / "src")
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.flip and data.crop_pad == 4

    tarball = tmp_path / "c.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "src" / cifar10.FOLDER, arcname=cifar10.FOLDER)
    monkeypatch.setenv("GPUPRUNE_DATA", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="wrong checksum"):
        load_dataset("cifar10", root=tarball)
    monkeypatch.setattr(cifar10, "TARBALL_MD5", hashlib.md5(tarball.read_bytes()).hexdigest())
    assert load_dataset("cifar10", root=tarball).train_x.shape == (20, 3, 32, 32)


def test_cifar10_offline_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GPUPRUNE_DATA", str(tmp_path))
    with pytest.raises(UserError, match="CIFAR-10 not found"):
        load_dataset("cifar10", download=False)
    with pytest.raises(UserError, match="data.root"):
        load_dataset("cifar10", root=tmp_path / "nothing")


def test_subsets_are_class_balanced_and_noted() -> None:
    data = make_synthetic(train=500, test=200, num_classes=5, size=4)
    cut = data.subset(train=100, test=50, seed=3)
    assert torch.bincount(cut.train_y).tolist() == [20] * 5
    assert len(cut.test_y) == 50
    assert any("100 of 500" in n for n in cut.notes)
    assert data.subset(train=100, seed=3).train_x.equal(cut.train_x)  # deterministic


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(UserError, match="fashion-mnist"):
        load_dataset("imagenet")


@pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist absent")
def test_debian_fashion_mnist_is_read() -> None:
    data = load_dataset("fashion-mnist", download=False)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
