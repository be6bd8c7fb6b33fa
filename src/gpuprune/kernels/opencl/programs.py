"""Kernel source loading and the program cache, keyed by (context, device, source hash, defines).

As in CLBlast, tile parameters are compile-time defines rendered as ``-DNAME=VALUE`` options; the
layer shape is a runtime argument, so one program per (target, variant) serves every layer.
"""

from __future__ import annotations

import hashlib
import threading
from importlib import resources
from typing import Any

from gpuprune.kernels.opencl.context import ClDevice, import_pyopencl

SOURCE_FILE = "skipgemm.cl"

_cache: dict[tuple[int, int, str, tuple[tuple[str, int], ...]], Any] = {}
_lock = threading.Lock()


def kernel_source() -> str:
    """The OpenCL source shipped as package data."""
    return resources.files(__package__).joinpath(SOURCE_FILE).read_text(encoding="utf-8")


def build_program(dev: ClDevice, defines: dict[str, int]) -> Any:
    """The built program for these defines on ``dev``; built once per process and cached."""
    cl = import_pyopencl()
    source = kernel_source()
    digest = hashlib.sha256(source.encode()).hexdigest()
    key = (dev.context.int_ptr, dev.device.int_ptr, digest, tuple(sorted(defines.items())))
    with _lock:
        program = _cache.get(key)
        if program is None:
            # -cl-std=CL1.2: the source must build on every OpenCL 1.2 device, so test it as such
            options = ["-cl-std=CL1.2"]
            options += [f"-D{name}={value}" for name, value in sorted(defines.items())]
            program = cl.Program(dev.context, source).build(options=options)
            _cache[key] = program
    return program


def cache_size() -> int:
    """How many programs are cached (for tests)."""
    return len(_cache)
