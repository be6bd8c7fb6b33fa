"""Compile the CPU kernel (``bsr_kernel.c``) with the system C compiler, once per machine.

The shared library is cached under ``$GPUPRUNE_CACHE_DIR/cpu`` (default
``~/.cache/gpuprune/cpu``) in a file named by a hash of the source, the compiler, the flags and
the host CPU, so editing the source, switching compiler or moving the cache to another machine
rebuilds it. The library is written under a temporary name and renamed into place, so processes
that build at the same time never load a half-written file.

``$GPUPRUNE_CPU_ARCH`` replaces ``-march=native`` (e.g. ``-mavx2 -mfma`` for a cache shared by
different machines, or an empty string for the portable SSE2/NEON build).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from gpuprune.errors import UserError

SOURCE = "bsr_kernel.c"
# -march=native: the micro-kernel is written with GCC vector types sized for the host's widest
# SIMD registers; -fopenmp: threads over (N-panel, row-block) tasks.
BASE_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
DEFAULT_ARCH = "-march=native"

_I64, _INT, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
# name: (argument types, result type)
_SIGNATURES = {
    "gp_panel_width": ([], ctypes.c_int),
    "gp_max_rows": ([], ctypes.c_int),
    # args (int64: B, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, pool, M, gm, bm, bk,
    # k_pad, relu; see ops.conv_args), img, row_ptr, col_idx, wt, bias, out, used, tables,
    # nthreads, mode, visits, residual (added before the store, or NULL), ReLU after it
    "gp_conv2d": ([_PTR] * 9 + [_INT, _INT, _PTR, _PTR, _INT], ctypes.c_int),
    "gp_conv_chain": ([_INT, _PTR, _PTR, _PTR, _INT], ctypes.c_int),
    # the same per image: + images, floats per input image, per output image
    "gp_conv_chain_images": ([_INT, _PTR, _PTR, _PTR, _I64, _I64, _I64, _INT], ctypes.c_int),
    # int32s of the tap tables for args, and the call that fills them (args, tables, nthreads)
    "gp_conv_table_ints": ([_PTR], ctypes.c_int64),
    "gp_conv_tables_kept": ([_PTR], ctypes.c_int64),
    "gp_conv_tables": ([_PTR, _PTR, _INT], None),
    # in, planes, H, W, kh, kw, sh, sw, ph, pw, OH, OW, out, nthreads
    "gp_maxpool2d": ([_PTR] + [_I64] * 11 + [_PTR, _INT], ctypes.c_int),
    # in, N, K, M, gm, bm, bk, k_pad, row_ptr, col_idx, wt, bias, relu, out, nthreads, visits
    "gp_linear": ([_PTR, _I64, _I64, _I64, _I64, _INT, _INT, _I64] + [_PTR] * 4
                  + [_INT, _PTR, _INT, _PTR], ctypes.c_int),
    # outputs of at least this many bytes are streamed past the caches; -1: the L2s' size
    "gp_set_stream_min_bytes": ([_I64], None),
}


def cache_dir() -> Path:
    """Where compiled kernels live: ``$GPUPRUNE_CACHE_DIR/cpu`` or ``~/.cache/gpuprune/cpu``."""
    root = os.environ.get("GPUPRUNE_CACHE_DIR") or Path.home() / ".cache" / "gpuprune"
    return Path(root) / "cpu"


def find_compiler() -> str:
    """The C compiler to use: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise UserError(
        "the cpu backend needs a C compiler to build its kernel, and none was found "
        "(tried $CC, cc, gcc, clang)",
        "install one (e.g. 'apt-get install gcc') or use backend='opencl' or 'reference'",
    )


def _host_id() -> str:
    """Identifies the CPU so a -march=native build is never loaded on a different one."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            text += next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return text


def _source() -> str:
    return resources.files(__package__).joinpath(SOURCE).read_text()


def _compile(cc: str, source: Path, out: Path, flags: tuple[str, ...]) -> str | None:
    """Compile to ``out``; return the compiler's error text, or None on success."""
    proc = subprocess.run(
        [cc, *flags, str(source), "-o", str(out)], capture_output=True, text=True, check=False
    )
    return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()


def _flag_sets() -> list[tuple[str, ...]]:
    """Flags to try in order: the full set, then without the arch flags, then without OpenMP
    (a compiler without it builds a single-threaded kernel rather than none)."""
    arch = tuple(os.environ.get("GPUPRUNE_CPU_ARCH", DEFAULT_ARCH).split())
    full = (*BASE_FLAGS[:1], *arch, *BASE_FLAGS[1:])
    return [full, BASE_FLAGS, tuple(f for f in BASE_FLAGS if f != "-fopenmp")]


@functools.cache
def load_library() -> ctypes.CDLL:
    """Build (if not cached) and load the kernel library; UserError when it cannot be built."""
    cc = find_compiler()
    src = _source()
    flag_sets = _flag_sets()
    text = "\0".join([src, cc, " ".join(flag_sets[0]), _host_id()])
    key = hashlib.sha256(text.encode()).hexdigest()
    target = cache_dir() / f"bsr_kernel-{key[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            source = Path(tmp) / SOURCE
            source.write_text(src)
            built = Path(tmp) / target.name
            errors = []
            # fall back when the compiler lacks the arch flags or OpenMP (single-threaded build)
            for flags in flag_sets:
                error = _compile(cc, source, built, flags)
                if error is None:
                    break
                errors.append(error)
            else:
                first = errors[0].splitlines()[-1] if errors[0] else "no output"
                raise UserError(
                    f"building the cpu kernel with {cc} failed: {first}",
                    "check the compiler install (set $CC to another one) or use backend='opencl'",
                )
            os.replace(built, target)
    lib = ctypes.CDLL(str(target))
    for name, (args, result) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = result
    return lib
