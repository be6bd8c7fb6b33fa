"""GEMM runners: one way each of computing ``Out[N, M] = X[N, K] @ W[M, K]^T``.

A runner factory takes the masked weight, the input, the target and the pruning method and returns
a zero-argument callable that computes the product and blocks until it is done, or raises
:class:`Unavailable` with the reason (no OpenCL platform, no CUDA, pyclblast missing...).
Each runner names the dense runner its ``speedup`` is measured against ("same backend's dense").
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.registry import Registry

Run = Callable[[], torch.Tensor]  # returns Out [N, M] (for the correctness check)


class Unavailable(Exception):
    """This runner cannot run here; the message says why."""


class NotApplicable(Exception):
    """This runner cannot run this one cell (e.g. a block shape it does not support)."""


@dataclass(frozen=True)
class Runner:
    name: str
    baseline: str  # the dense runner its speedup is against
    methods: tuple[str, ...] | None  # methods it runs (None: every method); "dense" = sparsity 0
    make: Callable[[torch.Tensor, torch.Tensor, Target, str], Run]


RUNNERS: Registry[Runner] = Registry("benchmark backend")
BLOCK_METHODS = ("tile", "simd", "simd-balanced")


def _add(name: str, baseline: str, methods: tuple[str, ...] | None):
    def deco(fn):
        RUNNERS.add(name, Runner(name, baseline, methods, fn))
        return fn

    return deco


# ---- PyTorch ------------------------------------------------------------------------------------
@_add("torch-dense", "torch-dense", ("dense",))
def _torch_dense(w, x, target, method):
    return lambda: F.linear(x, w)


@_add("torch-csr", "torch-dense", ("unstructured",))
def _torch_csr(w, x, target, method):
    wc, xt = w.to_sparse_csr(), x.t().contiguous()
    return lambda: torch.sparse.mm(wc, xt).t()


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return F.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0]))


@_add("torch-bsr", "torch-dense", BLOCK_METHODS)
def _torch_bsr(w, x, target, method):
    from gpuprune.kernels import block_for
    from gpuprune.prune import kernel_of

    bm, bk = block_for(target, kernel_of(method))
    if bm != bk and w.device.type == "cpu":
        raise NotApplicable(f"MKL's CPU BSR matmul needs square blocks, not {bm}x{bk}")
    m, k = w.shape
    mp, kp = -(-m // bm) * bm, -(-k // bk) * bk  # BSR needs whole blocks: pad with zeros
    with warnings.catch_warnings():  # "BSR support is in beta": known, not news to the user
        warnings.simplefilter("ignore", UserWarning)
        wb = _pad_to(w, mp, kp).to_sparse_bsr((bm, bk))
    xt = _pad_to(x, x.shape[0], kp).t().contiguous()
    return lambda: (wb @ xt)[:m].t()


# ---- gpuprune backends -------------------------------------------------------------------------
def _gpuprune(backend_name: str, variant: str | None) -> Callable:
    def make(w, x, target, method):
        from gpuprune.kernels import get_backend, pack_for
        from gpuprune.prune import kernel_of

        try:
            backend = get_backend(backend_name)
            backend.check_available()
        except UserError as err:
            raise Unavailable(str(err)) from None
        v = variant or kernel_of(method)
        fwd = backend.linear(pack_for(w, target, v), None, target, variant=v)
        return lambda: fwd(x)

    return make


for _b in ("cpu", "opencl", "triton"):
    _dense, _skip = f"{_b}-dense", f"{_b}-skip"
    RUNNERS.add(_dense, Runner(_dense, _dense, ("dense",), _gpuprune(_b, "dense")))
    RUNNERS.add(_skip, Runner(_skip, _dense, None, _gpuprune(_b, None)))


# ---- CLBlast (dense SGEMM on the same OpenCL device) --------------------------------------------
@_add("clblast", "clblast", ("dense",))
def _clblast(w, x, target, method):
    try:
        import pyclblast
        import pyopencl.array as cla

        from gpuprune.kernels.opencl.context import get_usable_device
    except ImportError as err:
        raise Unavailable(f"pyclblast/pyopencl not installed ({err.name}): make setup") from None
    try:
        # the device gpuprune's OpenCL backend uses, if its driver can build kernels at all
        queue = get_usable_device().queue
    except UserError as err:
        raise Unavailable(str(err)) from None
    n, k = x.shape
    m = w.shape[0]
    xa = cla.to_device(queue, x.numpy())
    wa = cla.to_device(queue, w.numpy())
    out = cla.zeros(queue, (n, m), dtype="float32")

    def run() -> torch.Tensor:
        # Out[N, M] = X[N, K] @ W[M, K]^T, all row-major
        pyclblast.gemm(queue, n, m, k, xa, wa, out, a_ld=k, b_ld=k, c_ld=m, b_transp=True)
        queue.finish()
        return out

    return run


# ---- CUDA ---------------------------------------------------------------------------------------
@_add("cublas", "cublas", ("dense",))
def _cublas(w, x, target, method):
    if not torch.cuda.is_available():
        raise Unavailable("no CUDA device")
    wc, xc = w.cuda(), x.cuda()

    def run():
        out = F.linear(xc, wc)
        torch.cuda.synchronize()
        return out

    return run
