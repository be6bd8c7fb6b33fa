"""Downloads with a checksum, written atomically, into a per-user cache folder."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from gpuprune.errors import UserError
from gpuprune.fileio import atomic_open


def cache_dir(name: str) -> Path:
    """``$GPUPRUNE_DATA`` or ``~/.cache/gpuprune/data``, plus ``name``."""
    base = os.environ.get("GPUPRUNE_DATA") or Path.home() / ".cache" / "gpuprune" / "data"
    return Path(base) / name


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` unless a file with the right checksum is already there.

    Raises:
        UserError: the download failed or its checksum is wrong (nothing is left at ``dest``).
    """
    if dest.exists() and md5sum(dest) == md5:
        return dest
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_open(dest, "wb") as fh:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        raise UserError(f"cannot download {url} ({exc})", "check the network") from None
    if md5sum(dest) != md5:
        dest.unlink()
        raise UserError(
            f"checksum mismatch for {url} (expected md5 {md5})",
            "retry the download or place a verified copy locally",
        )
    return dest
