"""The cpu backend's max pool for the ``nn.MaxPool2d`` layers compile does not fuse into a conv
(ResNet's 3x3 stride-2 stem pool): PyTorch's NCHW max pool is the slowest op of a compiled
ResNet-50 otherwise (48-55 ms of a 285 ms batch-16 forward here, 3.9 ms in our kernel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpuprune.kernels.cpu import buffers, ops
from gpuprune.kernels.cpu.build import load_library


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooled size: in ceil mode the last window must start inside the input or its
    left padding."""
    n = (size + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (n - 1) * s >= size + p:
        n -= 1
    return n


class CpuMaxPool2d(nn.Module):
    """``nn.MaxPool2d`` (dilation 1, no indices) through the cpu kernel for float32 NCHW input
    on the CPU; anything else (other dtypes, tracing by torch.compile/export) runs PyTorch's."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.kernel_size = _pair(pool.kernel_size)
        self.stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = _pair(pool.padding)
        self.ceil_mode = bool(pool.ceil_mode)

    @staticmethod
    def supports(pool: nn.Module) -> bool:
        return (type(pool) is nn.MaxPool2d and _pair(pool.dilation) == (1, 1)
                and not pool.return_indices)  # fmt: skip

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        if (x.dim() != 4 or x.dtype != torch.float32 or not x.is_cpu or ops.tracing(x)
                or x.requires_grad):  # fmt: skip
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                ceil_mode=self.ceil_mode)  # fmt: skip
        x = x.contiguous()
        b, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = _out(h, kh, sh, ph, self.ceil_mode), _out(w, kw, sw, pw, self.ceil_mode)
        if oh <= 0 or ow <= 0 or 2 * ph > kh or 2 * pw > kw:  # PyTorch's error, not ours
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                ceil_mode=self.ceil_mode)  # fmt: skip
        out = buffers.POOL.empty((b, c, oh, ow))
        if out.numel():
            status = load_library().gp_maxpool2d(
                x.data_ptr(), b * c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, out.data_ptr(),
                torch.get_num_threads(),
            )  # fmt: skip
            if status != 0:
                raise MemoryError("the cpu max pool could not allocate its row buffer")
        return out
