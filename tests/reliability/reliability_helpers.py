"""Helpers of the reliability suite: the CLI outcome check, tiny models, simulated disk full."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Filled by conftest hooks and the fuzz tests; printed in the session summary.
COUNTS = {"cases": 0, "passed": 0, "failed": 0, "fuzzed": 0}

TINY_CONFIG = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "synthetic", "options": {"train": 128, "test": 32, "size": 8, "channels": 1}},
    "model": {"name": "tiny-cnn", "width": 1.0},
    "dense": {"epochs": 2, "batch_size": 32, "lr": 0.05, "augment": False},
    "finetune": {"epochs": 2, "batch_size": 32, "lr": 0.01, "steps_per_epoch": 2,
                 "augment": False},
    "prune": {"methods": ["unstructured"], "sparsities": [0.5], "target": "cpu-pocl",
              "exclude_first_last": False},
    "latency": {"backends": ["reference"], "batch_size": 1, "repeats": 1, "warmup": 0,
                "budget_s": 0.05},
}  # fmt: skip

TINY_ARGS = ("--model", "tiny-cnn", "--in-channels", "1", "--width", "2")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def one_line_error(res: CliResult, code: int = 2) -> str:
    """Assert the outcome is one error line (no traceback) with exit ``code``; return it."""
    assert res.code == code, (res.code, res.err[-2000:])
    assert "Traceback" not in res.err
    # progress lines may come first; the error is the last line and the only one
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error: ", "internal error: "))]
    assert len(errors) == 1 and lines[-1] == errors[0], res.err
    prefix = "error: " if code == 2 else "internal error: "
    assert errors[0].startswith(prefix), errors[0]
    if code == 2:
        assert ";" in errors[0], f"no fix named: {errors[0]}"  # "problem; fix"
    return errors[0]


class Exploit:
    """Pickles to a call that creates ``marker``: loading it must never run that call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of a run folder at ``tmp_path/run`` (without its lock file)."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def write_config(tmp_path: Path, cfg: dict | str, name: str = "cfg.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def tiny_model(num_classes: int = 10, in_channels: int = 1, width: float = 2.0) -> torch.nn.Module:
    from gpuprune.models import create_model

    torch.manual_seed(0)
    return create_model("tiny-cnn", num_classes=num_classes, in_channels=in_channels, width=width)


@contextlib.contextmanager
def disk_full(monkeypatch: pytest.MonkeyPatch, after_bytes: int = 0) -> Iterator[list[str]]:
    """Simulate a full disk for every file gpuprune writes through its atomic writer.

    The first ``after_bytes`` bytes of each file are accepted, then writing raises
    ``OSError(ENOSPC)``; ``fsync`` fails too (a full disk may only show at flush time).
    Yields the list of paths whose writes failed.
    """
    import gpuprune.fileio as fileio

    failed: list[str] = []
    real_fdopen = os.fdopen

    class _Full:
        def __init__(self, fh):
            self._fh, self._n = fh, 0

        def write(self, data):
            if self._n + len(data) > after_bytes:
                failed.append(self._fh.name)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._n += len(data)
            return self._fh.write(data)

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._fh.__exit__(*exc)

    def fdopen(fd, *args, **kwargs):
        return _Full(real_fdopen(fd, *args, **kwargs))

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(fileio.os, "fdopen", fdopen)
        m.setattr(fileio.os, "fsync", fsync)
        yield failed
