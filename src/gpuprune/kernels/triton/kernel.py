"""Triton kernel: block-sparse implicit-GEMM convolution, ``Out = act(W x X + bias)``.

Imported lazily by the backend: ``@triton.jit`` decides at decoration time whether it compiles
for the GPU or runs in the interpreter (``TRITON_INTERPRET=1``, used by the CPU tests), and the
autotuning configurations are chosen for that mode here too.

GEMM view: ``Out[M, N] = W[M, K] x X[K, N]`` with ``M`` output channels, ``K = C * KH * KW``
in ``(kh, kw, c)`` order (``gemm.gemm_view``: a K block is one tap of a run of channels) and
``N = batch * OH * OW`` (batch folded into N, so batch 1 and batch 64 fill the GPU the same
way). ``X`` is never stored: a program computes each column's ``(b, oh, ow)`` once and each K
index's ``(kh, kw, c)`` per step and loads the input element through the input's own strides,
so NCHW, channels_last and any other strided input need no copy. A Linear layer is the 1x1
convolution of a 1x1 image.

Two walks over a row-block's kept weights (built by ``backend.TritonGemm``):

* ``TILE`` (tile and dense variants): ``row_ptr``/``col`` are the packed format's block lists,
  ``w`` holds each kept ``BM x BK`` block (``MWG x KWG`` from the Target) padded to
  ``BLOCK_M x BLOCK_K``. One loop step is one kept block: a contiguous K slab, one ``tl.dot``.
* column walk (SIMD variant): ``row_ptr`` counts kept K columns, ``col`` holds their K index and
  ``w`` each column's ``BLOCK_M`` weights. A step packs the next ``BLOCK_K`` kept columns of the
  row-group (kept ``R x simd_k`` vectors side by side) into one full-size ``tl.dot``.

The program id is one flat axis, row-block fastest: programs that run together share their X
columns (read once from HBM, then from L2) and no grid axis limit applies to large N.
Accumulation is float32 whatever the input dtype; ``PRECISION`` ("tf32" or "ieee") only
matters for float32 inputs and is chosen by the backend from PyTorch's own TF32 switches.
``UPCAST`` is set only in the interpreter for bfloat16, whose dot it gets wrong (it multiplies
the raw uint16 storage): products of bfloat16 values are exact in float32, so the float32 dot
gives what a bfloat16 tensor-core dot with float32 accumulation gives.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton import knobs

INTERPRETED = bool(knobs.runtime.interpret)  # which mode this import compiled for

# (BLOCK_N, num_warps, num_stages). On a GPU the autotuner times each once per GEMM shape and
# keeps the fastest (in-process and in Triton's on-disk cache). The interpreter runs one
# configuration: timing there means nothing and every extra config costs test time.
GPU_CONFIGS = ((32, 4, 4), (64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 8, 3), (256, 8, 3))
INTERPRETER_CONFIGS = ((32, 1, 1),)
CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bn, w, s in (INTERPRETER_CONFIGS if INTERPRETED else GPU_CONFIGS)
]

# Only core builtins below (tl.full, not tl.zeros; no tl.sum): the standard-library helpers are
# themselves @jit functions fixed when triton is imported, so they break the interpreter when
# triton was imported before TRITON_INTERPRET was set.


@triton.jit
def _gather_columns(
    x_ptr, k, k_ok, xcol, ih0, iw0, n_ok, H, W, C,
    sxc, sxh, sxw, dil_h, dil_w, KH: tl.constexpr, KW: tl.constexpr,
):  # fmt: skip
    """The ``[BLOCK_K, BLOCK_N]`` slab of implicit im2col columns for K indices ``k``."""
    c = k % C
    r = k // C
    dh = (r // KW) * dil_h
    dw = (r % KW) * dil_w
    ih = ih0[None, :] + dh[:, None]
    iw = iw0[None, :] + dw[:, None]
    ok = k_ok[:, None] & n_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    ptr = x_ptr + xcol[None, :] + (c * sxc)[:, None] + ih * sxh + iw * sxw
    return tl.load(ptr, mask=ok, other=0.0)


# Sizes and strides are not specialised on (divisibility by 16, == 1): the gathered loads gain
# nothing from it, and each specialisation is one more compile per configuration.
RUNTIME_INTS = [
    "M", "N", "K", "BM", "BK", "GM", "H", "W", "OH", "OW", "stride_h", "stride_w", "pad_h",
    "pad_w", "dil_h", "dil_w", "sxb", "sxc", "sxh", "sxw", "sob", "som", "soh", "sow",
]  # fmt: skip


def _quick_bench(kernel_call, quantiles):
    """Autotuning timer: a short warm-up and window (the default 25 + 100 ms per config and
    shape would dominate a benchmark of many layer shapes)."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


@triton.autotune(
    configs=CONFIGS,
    key=["M", "N", "K", "BM", "BK", "KH", "KW", "TILE"],
    reset_to_zero=["count_ptr"],
    do_bench=_quick_bench,
    cache_results=True,
)
@triton.jit(do_not_specialize=RUNTIME_INTS)
def skip_conv_gemm(
    x_ptr, out_ptr, bias_ptr, row_ptr_ptr, col_ptr, w_ptr, count_ptr,
    M, N, K, BM, BK, GM,
    H, W, OH, OW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxb, sxc, sxh, sxw, sob, som, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, TILE: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, COUNT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rb = pid % GM
    pn = pid // GM
    offs_m = tl.arange(0, BLOCK_M)
    rows = rb * BM + offs_m
    m_ok = (offs_m < BM) & (rows < M)
    # per column, once: image, output pixel, top-left input pixel
    offs_n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    b = offs_n // (OH * OW)
    pix = offs_n % (OH * OW)
    oh = pix // OW
    ow = pix % OW
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    xcol = b * sxb
    offs_kk = tl.arange(0, BLOCK_K)
    start = tl.load(row_ptr_ptr + rb)
    end = tl.load(row_ptr_ptr + rb + 1)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, dtype=tl.float32)
    C = K // (KH * KW)  # input channels: K's fastest index
    if TILE:
        for j in range(start, end):
            kb = tl.load(col_ptr + j)
            k = kb * BK + offs_kk
            k_ok = (offs_kk < BK) & (k < K)
            w = tl.load(w_ptr + j * (BLOCK_M * BLOCK_K) + offs_m[:, None] * BLOCK_K
                        + offs_kk[None, :])  # fmt: skip
            x = _gather_columns(x_ptr, k, k_ok, xcol, ih0, iw0, n_ok, H, W, C,
                                sxc, sxh, sxw, dil_h, dil_w, KH, KW)  # fmt: skip
            if UPCAST:
                w = w.to(tl.float32)
                x = x.to(tl.float32)
            acc = tl.dot(w, x, acc, input_precision=PRECISION)
            if COUNT:
                tl.atomic_add(count_ptr, tl.minimum(BK, K - kb * BK))
    else:
        for t0 in range(start, end, BLOCK_K):
            offs = t0 + offs_kk
            k_ok = offs < end
            k = tl.load(col_ptr + offs, mask=k_ok, other=0)
            w = tl.load(w_ptr + offs[None, :] * BLOCK_M + offs_m[:, None], mask=k_ok[None, :],
                        other=0.0)  # fmt: skip
            x = _gather_columns(x_ptr, k, k_ok, xcol, ih0, iw0, n_ok, H, W, C,
                                sxc, sxh, sxw, dil_h, dil_w, KH, KW)  # fmt: skip
            if UPCAST:
                w = w.to(tl.float32)
                x = x.to(tl.float32)
            acc = tl.dot(w, x, acc, input_precision=PRECISION)
            if COUNT:
                tl.atomic_add(count_ptr, tl.minimum(end - t0, BLOCK_K))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=m_ok, other=0.0)[:, None]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out = (out_ptr + (b * sob + oh * soh + ow * sow)[None, :] + rows[:, None] * som)
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
