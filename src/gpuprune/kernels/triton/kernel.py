"""Triton kernel: block-sparse gathered-K matmul, ``Out = act(W x X + bias)`` with W row-blocked.

Imported lazily by the backend: ``@triton.jit`` decides at decoration time whether it compiles
for the GPU or runs in the interpreter (``TRITON_INTERPRET=1``, used by the CPU tests).

Layout (built by ``backend.TritonGemm`` from a :class:`BlockSparseWeight`):

* ``kptr`` int32 [gm + 1]: kept K columns of row-block i are entries ``kptr[i]:kptr[i+1]``;
* ``kidx`` int32 [nnzk]: the K index of each kept column (a kept ``bm x bk`` block contributes
  its ``bk`` consecutive columns), ascending;
* ``wk``   float32 [nnzk, bm]: the row-block's weights of that column.

A program owns one row-block (``BLOCK_M >= bm`` rows, padded to a power of two >= 16 for
``tl.dot``) and one ``BLOCK_N`` tile of columns, and walks its kept columns ``BLOCK_K`` at a time:
it gathers the ``BLOCK_K`` rows of X they name and multiplies with ``tl.dot``. For tile blocks
(``bk`` a power of two >= 16, ``BLOCK_K = bk``) one step is exactly one kept block; for SIMD
blocks (``R x simd_k``, e.g. 16 x 1) a step packs 16 kept k-vectors into one dot, so the thin
vectors are skipped at their own granularity. Pruned columns are never loaded.

Strides make one kernel serve both layers: a convolution passes ``F.unfold`` output
[B, K, L] (batch on grid axis 2), a linear layer passes x [B, K] as X^T with N = B.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton import knobs

INTERPRETED = bool(knobs.runtime.interpret)  # which mode this import compiled for

# Only core builtins below (tl.full, not tl.zeros; no tl.sum): the standard-library helpers are
# themselves @jit functions fixed when triton is imported, so they break the interpreter when
# triton was imported before TRITON_INTERPRET was set.


@triton.jit
def bsr_gathered_matmul(
    x_ptr, out_ptr, bias_ptr, kptr_ptr, kidx_ptr, wk_ptr, count_ptr,
    M, N, BM,
    stride_xb, stride_xk, stride_xn, stride_ob, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, COUNT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rb = tl.program_id(0)
    pn = tl.program_id(1)
    b = tl.program_id(2)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = rb * BM + offs_m
    m_ok = (offs_m < BM) & (rows < M)
    n_ok = offs_n < N
    start = tl.load(kptr_ptr + rb)
    end = tl.load(kptr_ptr + rb + 1)
    x_base = x_ptr + b * stride_xb + offs_n[None, :] * stride_xn
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, dtype=tl.float32)
    for t0 in range(start, end, BLOCK_K):
        offs_k = t0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < end
        k = tl.load(kidx_ptr + offs_k, mask=k_ok, other=0)
        w = tl.load(
            wk_ptr + offs_k[None, :] * BM + offs_m[:, None],
            mask=k_ok[None, :] & m_ok[:, None], other=0.0,
        )  # fmt: skip
        x = tl.load(x_base + k[:, None] * stride_xk, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc += tl.dot(w, x, input_precision="ieee")
        if COUNT:
            tl.atomic_add(count_ptr, tl.minimum(end - t0, BLOCK_K))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=m_ok, other=0.0)[:, None]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out = out_ptr + b * stride_ob + rows[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out, acc, mask=m_ok[:, None] & n_ok[None, :])
