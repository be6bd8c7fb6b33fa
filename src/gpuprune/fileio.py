"""Safe file handling: crash-safe writes, output paths checked before any work, folders we own.

* Writes go to a temp file in the same folder, are fsynced, then renamed over the target.
* An output path is checked up front (:func:`check_output`): never a device, a symbolic link,
  a folder or one of the command's inputs.
* Folders gpuprune creates carry a marker file (:data:`MARKER`); only marked folders are ever
  moved aside, and nothing is deleted that gpuprune did not write.
* Stored results carry a sha256 of their content (:func:`write_record`, :func:`read_record`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from gpuprune.errors import UserError

MARKER = ".gpuprune"  # in every folder gpuprune created: only those may be moved or cleared
TEMP_STEM = 64  # characters of the target's name kept in its temp name (names end at 255 bytes)


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def check_writable(target: Path, what: str = "output") -> None:
    """Refuse to replace anything but a regular file: a device, pipe, link or folder stays.

    Symbolic links are refused, not written through: replacing the link would leave its
    target stale, and writing into the target would change a file the user named elsewhere.
    """
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise _parent_not_folder(target, what) from None
    if stat.S_ISLNK(st.st_mode):
        raise UserError(f"{what} {target} is a symbolic link (gpuprune never writes through one)",
                        "pass the real file's path or a new name")
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {target} is a folder", "pass a file name inside it")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {target} is not a regular file (a device, pipe or socket)",
                        "pass the path of a regular file")


def _parent_not_folder(target: Path, what: str) -> UserError:
    parent = next((p for p in reversed(target.parents) if p.exists() and not p.is_dir()), None)
    where = f" ({parent} is a file)" if parent is not None else ""
    return UserError(f"{what} {target}: its parent is not a folder{where}",
                     "choose a path whose parent is a folder")


def _make_parent(target: Path, what: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _parent_not_folder(target, what) from None


def check_output(path: str | os.PathLike[str], *, flag: str = "-o",
                 inputs: Iterable[str | os.PathLike[str] | None] = (),
                 folder: bool = False) -> Path:  # fmt: skip
    """Check an output path given as ``flag`` before any work; returns it as a Path.

    A file output (``folder=False``) must not end with ``/``, be a folder, a device, a link, or
    one of ``inputs``; a folder output must be a folder or not exist. Either way its parent must
    be a folder (or not exist yet).

    Raises:
        UserError: naming ``flag`` and the fix.
    """
    text = os.fspath(path)
    p = Path(text)
    name = f"{flag} {text}"
    if folder:
        if p.is_symlink() and not p.is_dir():
            raise UserError(f"{name} is a symbolic link to no folder", "pass a folder")
        if p.exists() and not p.is_dir():
            raise UserError(f"{name} is a file, not a folder", "pass a folder (new or existing)")
    else:
        if text.endswith(os.sep) or p.is_dir():
            raise UserError(f"{name} names a folder", "pass a file name inside it")
        check_writable(p, flag)
        if p.exists():
            for src in inputs:
                if src is not None and Path(src).exists() and os.path.samefile(src, p):
                    raise UserError(f"{name} is also the input {src}; writing it would destroy it",
                                    "pass another output path")
    for parent in p.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"{name}: {parent} is a file, not a folder",
                                "choose a path whose parent is a folder")
            break
    if len(p.name.encode()) > 255:
        raise UserError(f"{name}: the file name is longer than 255 bytes", "choose a shorter name")
    return p


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temp file is removed and ``path`` is left as it was, so a reader never
    sees a half-written file. ``path`` must be a regular file or not exist (see
    :func:`check_writable`).
    """
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open supports 'w' and 'wb' only")
    target = Path(path)
    _make_parent(target, "output")
    check_writable(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:TEMP_STEM]}.", suffix=".tmp",
                               dir=target.parent)  # fmt: skip
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (or the old file's)
        os.chmod(tmp, _mode_for(target))
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        check_writable(target)  # made a link or device meanwhile: leave it, drop ours
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


# ---- checksummed records ---------------------------------------------------------------------
SHA_KEY = "sha256"


def _record_digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != SHA_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_record(path: str | os.PathLike[str], record: dict[str, Any]) -> dict[str, Any]:
    """Store a JSON result with a sha256 of its content (key ``sha256``); returns it as stored."""
    stored = {k: v for k, v in record.items() if k != SHA_KEY}
    stored[SHA_KEY] = _record_digest(stored)
    atomic_write_text(path, json.dumps(stored, indent=1))
    return stored


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A stored JSON result, or {} when it is missing, unreadable or its checksum is wrong.

    Then it is computed again: a flipped digit in a stored accuracy is never reused.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # truncated, flipped or empty: never reuse part of it
        return {}
    if not isinstance(data, dict) or data.get(SHA_KEY) != _record_digest(data):
        return {}
    return data


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---- folders gpuprune owns -------------------------------------------------------------------
def is_ours(folder: str | os.PathLike[str], legacy: Iterable[str] = ()) -> bool:
    """Whether gpuprune created ``folder``: it holds the marker (or, from older versions, one of
    the ``legacy`` files gpuprune always wrote there)."""
    folder = Path(folder)
    names = (MARKER, *legacy)
    return any((folder / n).is_file() and not (folder / n).is_symlink() for n in names)


def own_folder(folder: str | os.PathLike[str], what: str, fix: str,
               legacy: Iterable[str] = ()) -> Path:  # fmt: skip
    """Create ``folder`` (or adopt it if empty) and mark it as gpuprune's; returns it.

    Raises:
        UserError: it is a file, or a non-empty folder gpuprune did not create.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder", fix)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _parent_not_folder(folder, what) from None
    if not is_ours(folder, legacy):
        if any(p.name != ".lock" for p in folder.iterdir()):
            raise UserError(f"{what} {folder} holds files gpuprune did not write", fix)
        atomic_write_text(folder / MARKER, "made by gpuprune: it may move or replace files here\n")
    return folder


def set_aside(path: str | os.PathLike[str], stale_root: str | os.PathLike[str]) -> Path | None:
    """Move a stale result (file or marked folder) under ``stale_root`` instead of deleting it.

    Returns where it went (None if ``path`` does not exist).

    Raises:
        UserError: ``path`` is a folder gpuprune did not create.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir() and not path.is_symlink() and not is_ours(path, ("key.txt",)):
        raise UserError(f"{path} holds files gpuprune did not write",
                        "move it out of the run folder, then rerun")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest_dir = Path(stale_root) / stamp
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.name
    n = 1
    while dest.exists() or dest.is_symlink():
        n += 1
        dest = dest_dir / f"{path.name}.{n}"
    os.replace(path, dest)
    return dest


@contextlib.contextmanager
def dir_lock(folder: str | os.PathLike[str], what: str = "run folder") -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` while the block runs.

    The kernel drops the lock when the process ends, even by SIGKILL, so a killed run never
    leaves the folder locked. The lock file is created with ``O_EXCL`` and opened with
    ``O_NOFOLLOW``: a link planted there is refused, never followed (and never truncated).

    Raises:
        UserError: another process holds the lock, or ``.lock`` is not a regular file.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _parent_not_folder(folder, what) from None
    lock = folder / ".lock"
    bad = UserError(f"{lock} is not a regular file (a link or device)",
                    "remove it (it is not gpuprune's lock), then rerun")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):
                raise bad from None
            raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise bad
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
