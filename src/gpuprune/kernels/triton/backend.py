"""The triton backend: a block-sparse gathered-K matmul on CUDA/ROCm GPUs.

Convolutions run as ``F.unfold`` (im2col) followed by the kernel, linear layers directly. The
kernel itself is in :mod:`gpuprune.kernels.triton.kernel`; see its header for the layout.
Without a GPU the backend refuses to run unless ``TRITON_INTERPRET=1`` is set (Triton's CPU
interpreter, used by the tests: correct but slow).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from gpuprune.errors import DeviceNotFoundError, UserError
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels.backends import (
    BACKENDS,
    LayerClassBackend,
    check_input,
)
from gpuprune.kernels.format import BlockSparseWeight

BLOCK_N = 64  # output columns per program


def interpreted() -> bool:
    """True when ``TRITON_INTERPRET=1`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernels() -> ModuleType:
    """The kernel module, (re)imported so that it matches the current TRITON_INTERPRET."""
    try:
        module = importlib.import_module("gpuprune.kernels.triton.kernel")
    except ImportError as err:
        raise UserError(
            f"the triton backend needs the triton package ({err})",
            "pip install 'gpuprune[triton]' on a CUDA/ROCm machine, or use backend='opencl' "
            "or 'cpu'",
        ) from None
    if interpreted() != module.INTERPRETED:
        module = importlib.reload(module)
    return module


def _check_available() -> None:
    if not interpreted() and not torch.cuda.is_available():
        raise DeviceNotFoundError(
            "the triton backend needs a CUDA/ROCm GPU and torch sees none",
            "use backend='opencl' or 'cpu' (or set TRITON_INTERPRET=1 to test on the CPU)",
        )
    _kernels()


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class TritonGemm:
    """A packed weight on the device in the kernel's kept-column layout.

    Attributes:
        kept_columns: kept K columns summed over row-blocks (ragged padding excluded).
        count_visits: when True, each call adds the columns the kernel walked to
            :attr:`visited_columns` (per N tile and image: instrumentation for tests).
    """

    def __init__(self, packed: BlockSparseWeight, bias: Tensor | None, relu: bool) -> None:
        _check_available()
        self.device = torch.device("cpu" if interpreted() else "cuda")
        (m, k), (bm, bk) = packed.shape, packed.block
        gm, gk = packed.grid
        row_ptr, col_idx, values = packed.row_ptr.long(), packed.col_idx.long(), packed.values
        # one entry per kept column: k index and the bm weights of that column
        kidx = (col_idx[:, None] * bk + torch.arange(bk)).reshape(-1)
        wk = values.float().transpose(1, 2).reshape(-1, bm)
        real = kidx < k  # drop the zero padding of a ragged last K block
        owner = torch.repeat_interleave(torch.arange(gm), row_ptr[1:] - row_ptr[:-1])
        per_row = torch.bincount(owner.repeat_interleave(bk)[real], minlength=gm)
        kptr = torch.zeros(gm + 1, dtype=torch.int64)
        kptr[1:] = per_row.cumsum(0)
        dev = self.device
        self.kptr = kptr.to(torch.int32).to(dev)
        self.kidx = kidx[real].to(torch.int32).contiguous().to(dev)
        self.wk = wk[real].contiguous().to(dev)
        self.bias = None if bias is None else bias.detach().float().reshape(m).contiguous().to(dev)
        self.shape, self.bm, self.gm, self.relu = (m, k), bm, gm, relu
        self.block_m = max(16, _pow2(bm))
        self.block_k = bk if bk == _pow2(bk) and 16 <= bk <= 128 else 32
        self.kept_columns = int(self.kidx.numel())
        self.count_visits = False
        self.visited_columns = 0

    @property
    def kernels(self) -> ModuleType:
        """The kernel module (not stored, so layers stay picklable and copyable)."""
        return _kernels()

    def run(self, x: Tensor, out: Tensor, n: int, batches: int, xs: tuple, os_: tuple) -> None:
        """Launch over (row-block, N tile, image); strides ``xs`` (b, k, n), ``os_`` (b, m, n)."""
        counter = torch.zeros(1, dtype=torch.int32, device=self.device)
        block_n = min(BLOCK_N, max(16, _pow2(n)))
        grid = (self.gm, -(-n // block_n), batches)
        dummy = self.wk  # any valid pointer for the unused bias argument
        self.kernels.bsr_gathered_matmul[grid](
            x, out, self.bias if self.bias is not None else dummy, self.kptr, self.kidx, self.wk,
            counter, self.shape[0], n, self.bm, *xs, *os_,
            HAS_BIAS=self.bias is not None, RELU=self.relu, COUNT=self.count_visits,
            BLOCK_M=self.block_m, BLOCK_N=block_n, BLOCK_K=self.block_k,
        )  # fmt: skip
        if self.count_visits:
            self.visited_columns += int(counter.item())

    def tiles(self, n: int) -> int:
        """Programs along N for ``n`` columns (for checking the visit counter)."""
        block_n = min(BLOCK_N, max(16, _pow2(n)))
        return -(-n // block_n)


class TritonLinear(TritonGemm):
    """Forward of a packed Linear layer: [B, K] -> [B, M] on the backend's device."""

    def __call__(self, x: Tensor) -> Tensor:
        check_input(x, 2, self.shape[1], "Linear")
        x = x.to(self.device).contiguous()
        n, m = x.shape[0], self.shape[0]
        out = torch.empty(n, m, device=self.device)
        # X[k, n] = x[n, k]; Out[m, n] -> out[n, m]
        self.run(x, out, n, 1, (0, 1, x.stride(0)), (0, 1, out.stride(0)))
        return out


class TritonConv2d(TritonGemm):
    """Forward of a packed groups=1 Conv2d (im2col with ``F.unfold``): NCHW in and out."""

    def __init__(self, packed, bias, relu, in_channels, kernel_size, stride, padding,
                 dilation) -> None:  # fmt: skip
        super().__init__(packed, bias, relu)
        self.in_channels = in_channels
        self.conv = dict(kernel_size=tuple(kernel_size), stride=tuple(stride),
                         padding=tuple(padding), dilation=tuple(dilation))  # fmt: skip

    def __call__(self, x: Tensor) -> Tensor:
        check_input(x, 4, self.in_channels, "Conv2d")
        x = x.to(self.device)
        b, _, h, w = x.shape
        oh, ow = ConvGeometry(self.in_channels, **self.conv).check_input(h, w)
        cols = F.unfold(x, **self.conv).contiguous()  # [B, K, L], K order (c, kh, kw)
        out = torch.empty(b, self.shape[0], oh * ow, device=self.device)
        self.run(cols, out, oh * ow, b, cols.stride(), out.stride())
        return out.view(b, self.shape[0], oh, ow)


@BACKENDS.register("triton")
class TritonBackend(LayerClassBackend):
    """Triton gathered-K block-sparse matmul for CUDA/ROCm GPUs (interpreter mode for tests)."""

    name = "triton"
    linear_layer = TritonLinear
    conv_layer = TritonConv2d

    def check_available(self) -> None:
        _check_available()

    @property
    def device(self) -> str:
        if interpreted():
            return "cpu (triton interpreter)"
        return torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
