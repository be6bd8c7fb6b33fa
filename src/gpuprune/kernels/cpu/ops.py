"""The CPU skip kernels as PyTorch custom ops: ``torch.ops.gpuprune.cpu_conv2d`` and
``torch.ops.gpuprune.cpu_linear``.

As custom ops with fake (meta) implementations, a compiled model traces under
``torch.compile(fullgraph=True)`` and ``torch.export``: the tracer sees one opaque op per layer
with a known output shape, and Inductor fuses the PyTorch ops around it (pooling, residual adds,
flatten). The ops take only tensors and integers, so an exported program carries the packed
weight as constants and needs nothing but this module imported to run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpuprune.geometry import out_size
from gpuprune.kernels.cpu.build import load_library


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def check_status(status: int) -> None:
    if status == 2:  # gp_conv_chain refused the buffers a chain's calls name: our bug
        raise RuntimeError("gpuprune's cpu chain named a buffer it cannot use (a bug)")
    if status != 0:
        raise MemoryError("the cpu kernel could not allocate its im2col buffer")


def tracing(x: Tensor) -> bool:
    """Whether ``x`` is being traced (torch.compile, torch.export, fake tensors): then layers call
    the custom ops; in eager mode they call the kernel directly, because the dispatcher's
    Python custom-op path costs more than a small layer's whole kernel call."""
    return torch.compiler.is_compiling() or type(x) is not Tensor


# ``pool`` codes of the kernel: no pool, or a fused 2x2 stride-2 max pool in floor / ceil mode
POOL_CODES = {None: 0, "floor": 1, "ceil": 2}


def conv_out_hw(h: int, w: int, geometry: list[int], pool: int) -> tuple[int, int]:
    """Output height and width: the convolution's, halved by a fused 2x2 max pool (``pool`` 1:
    floor mode, 2: ceil mode)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    if pool:
        up = int(pool == 2)
        return (oh + up) // 2, (ow + up) // 2
    return oh, ow


def conv_args(shape: tuple[int, ...], geometry: list[int], pool: int, m: int, gm: int, bm: int,
              bk: int, k_pad: int, relu: bool) -> Tensor:  # fmt: skip
    """The kernel's integer arguments for an input of ``shape``, as one int64 array
    (``gp_geom`` in bsr_kernel.c): the geometry, the pool flag, then the weight's."""
    b, c, h, w = shape
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    return torch.tensor([b, c, h, w, *geometry, oh, ow, int(pool), m, gm, bm, bk, k_pad,
                         int(relu)], dtype=torch.int64)  # fmt: skip


def out_pixels(args: Tensor) -> int:
    """Output pixels per image of the call ``args`` describes (before a fused pool)."""
    return int(args[12] * args[13])  # oh, ow in conv_args' order


def conv_tables(args: Tensor) -> Tensor:
    """The im2col tap tables for the call ``args`` describes (depend on the input shape only)."""
    lib = load_library()
    tables = torch.empty(max(1, lib.gp_conv_table_ints(_ptr(args))), dtype=torch.int32)
    lib.gp_conv_tables(_ptr(args), _ptr(tables), torch.get_num_threads())
    return tables


def conv2d(
    x: Tensor,
    wt: Tensor,
    row_ptr: Tensor,
    col_idx: Tensor,
    bias: Tensor | None,
    used: Tensor,
    geometry: list[int],
    m: int,
    bm: int,
    bk: int,
    relu: bool,
    mode: int,
    pool: int = 0,
    visits: Tensor | None = None,
) -> Tensor:
    """The kernel call behind ``gpuprune::cpu_conv2d``; ``visits`` (int64 [1]) counts blocks."""
    x = x.contiguous()
    b, c, h, w = x.shape
    oh, ow = conv_out_hw(h, w, geometry, pool)
    out = torch.empty(b, m, oh, ow, dtype=torch.float32)
    gm, k_pad = row_ptr.numel() - 1, used.numel() * bk
    lib = load_library()
    # the kernel addresses the input with int32 offsets: split batches above 2**31 floats
    step = max(1, (2**31 - 1) // max(1, c * h * w))
    for start in range(0, b, step):
        xs, ys = x[start : start + step], out[start : start + step]
        args = conv_args(xs.shape, geometry, pool, m, gm, bm, bk, k_pad, relu)
        check_status(lib.gp_conv2d(
            _ptr(args), _ptr(xs), _ptr(row_ptr), _ptr(col_idx), _ptr(wt), _ptr(bias), _ptr(ys),
            _ptr(used), None, torch.get_num_threads(), mode, _ptr(visits), None, 0,
        ))  # fmt: skip
    return out


def linear(
    x: Tensor,
    wt: Tensor,
    row_ptr: Tensor,
    col_idx: Tensor,
    bias: Tensor | None,
    m: int,
    bm: int,
    bk: int,
    relu: bool,
    visits: Tensor | None = None,
) -> Tensor:
    """The kernel call behind ``gpuprune::cpu_linear``."""
    x = x.contiguous()
    n, k = x.shape
    out = torch.empty(n, m, dtype=torch.float32)
    if n == 0:
        return out
    k_pad = -(-k // bk) * bk
    check_status(load_library().gp_linear(
        _ptr(x), n, k, m, row_ptr.numel() - 1, bm, bk, k_pad, _ptr(row_ptr), _ptr(col_idx),
        _ptr(wt), _ptr(bias), int(relu), _ptr(out), torch.get_num_threads(), _ptr(visits),
    ))  # fmt: skip
    return out


@torch.library.custom_op("gpuprune::cpu_conv2d", mutates_args=(), device_types="cpu")
def cpu_conv2d(
    x: Tensor,
    wt: Tensor,
    row_ptr: Tensor,
    col_idx: Tensor,
    bias: Tensor | None,
    used: Tensor,
    geometry: list[int],
    m: int,
    bm: int,
    bk: int,
    relu: bool,
    mode: int,
    pool: int = 0,
) -> Tensor:
    """``act(conv2d(x, W) + bias)`` over the kept blocks of W (BSR, k-major blocks ``wt``),
    then with ``pool`` = 1 (2) a 2x2 stride-2 max pool in floor (ceil) mode.

    ``geometry`` is (kh, kw, sh, sw, ph, pw, dh, dw); ``used`` flags the K blocks some
    row-block keeps (one byte per K block); ``mode`` the schedule (0 automatic).
    """
    return conv2d(x, wt, row_ptr, col_idx, bias, used, geometry, m, bm, bk, relu, mode, pool)


@cpu_conv2d.register_fake
def _(x, wt, row_ptr, col_idx, bias, used, geometry, m, bm, bk, relu, mode, pool=0):
    oh, ow = conv_out_hw(x.shape[2], x.shape[3], geometry, pool)
    return x.new_empty((x.shape[0], m, oh, ow))


@torch.library.custom_op("gpuprune::cpu_linear", mutates_args=(), device_types="cpu")
def cpu_linear(
    x: Tensor,
    wt: Tensor,
    row_ptr: Tensor,
    col_idx: Tensor,
    bias: Tensor | None,
    m: int,
    bm: int,
    bk: int,
    relu: bool,
) -> Tensor:
    """``act(x @ W.T + bias)`` for x [B, K] over the kept blocks of W."""
    return linear(x, wt, row_ptr, col_idx, bias, m, bm, bk, relu)


@cpu_linear.register_fake
def _(x, wt, row_ptr, col_idx, bias, m, bm, bk, relu):
    return x.new_empty((x.shape[0], m))
