"""Crash-safe file writing: write to a temp file in the same folder, fsync, then rename."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temp file is removed and ``path`` is left as it was, so a reader never
    sees a half-written file.
    """
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open supports 'w' and 'wb' only")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (or the old file's)
        os.chmod(tmp, _mode_for(target))
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A stored JSON result, or {} when it is missing or unreadable (then it is computed again)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # truncated, flipped or empty: never reuse part of it
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def dir_lock(folder: str | os.PathLike[str], what: str = "run folder") -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` while the block runs.

    The kernel drops the lock when the process ends, even by SIGKILL, so a killed run never
    leaves the folder locked.

    Raises:
        UserError: another process holds the lock.
    """
    from gpuprune.errors import UserError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{what} {folder} is in use by another gpuprune run",
                "wait for it to finish or pass another output folder",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
