"""The triton backend: block-sparse implicit-GEMM convolution and linear layers on CUDA/ROCm.

The kernel is in :mod:`gpuprune.kernels.triton.kernel` (layout in its header). This module lays
the packed weight out for the kernel's walk (tile: whole ``MWG x KWG`` blocks; SIMD: kept
columns), keeps one copy per compute dtype on the device, and picks the dot precision the way
PyTorch's dense path would. Without a GPU the backend refuses to run unless
``TRITON_INTERPRET=1`` is set (Triton's CPU interpreter, used by the tests: correct but slow).

Precision (docs/design/kernels.md): float16/bfloat16 inputs run float16/bfloat16 dots with float32
accumulation and come out in the input dtype; float32 inputs use TF32 exactly when PyTorch
would for the same dense op (``torch.backends.cudnn.allow_tf32`` for convolutions,
``torch.backends.cuda.matmul.allow_tf32`` for linear layers), read at every call. Under
``torch.autocast`` a layer computes in the autocast dtype, as ``nn.Conv2d`` does.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch
from torch import Tensor

from gpuprune.arch import Target
from gpuprune.errors import DeviceNotFoundError, UserError
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels.backends import (
    BACKENDS,
    Backend,
    Forward,
    check_conv_shape,
    check_input,
    for_variant,
)
from gpuprune.kernels.format import BlockSparseWeight

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SIMD_BLOCK_K = 32  # kept columns per dot in the SIMD walk: two k16 tensor-core steps
MIN_BLOCK_K = 16  # smallest K of a float16/bfloat16 tensor-core dot


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


def fp32_precision(kind: str) -> str:
    """``tl.dot`` precision for float32 inputs: "tf32" exactly when PyTorch would use TF32 for
    the same dense op (cuDNN convolutions: ``cudnn.allow_tf32``, on by default; matmuls:
    ``cuda.matmul.allow_tf32``, off by default), else "ieee". ROCm: always "ieee"."""
    if getattr(torch.version, "hip", None):
        return "ieee"
    if kind == "conv":
        allowed = torch.backends.cudnn.enabled and torch.backends.cudnn.allow_tf32
    else:
        allowed = torch.backends.cuda.matmul.allow_tf32
    return "tf32" if allowed else "ieee"


def compute_dtype(x: Tensor, device: torch.device) -> torch.dtype:
    """The dtype a layer computes in: the autocast dtype when autocast is on, else x's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return x.dtype


class TritonGemm:
    """A packed weight on the device, laid out for one of the kernel's two walks.

    Args:
        packed: the weight as the kernel walks it (``for_variant`` output).
        bias: float32 bias or None.
        relu: fuse a ReLU into the epilogue.
        walk: "tile" (one ``bm x bk`` block per step; tile and dense variants) or "columns"
            (kept columns packed ``SIMD_BLOCK_K`` per step; SIMD variant).

    Attributes:
        kept_columns: K columns the kernel walks summed over row-blocks (ragged padding excluded).
        count_visits: when True, each call adds the columns the kernel walked to
            :attr:`visited_columns` (per N tile: instrumentation for tests).
    """

    kind = "linear"  # which PyTorch TF32 switch applies

    def __init__(
        self, packed: BlockSparseWeight, bias: Tensor | None, relu: bool, walk: str = "tile"
    ) -> None:
        _check_available()
        if walk not in ("tile", "columns"):
            raise ValueError(f"unknown walk {walk!r}")
        self.device = torch.device("cpu" if interpreted() else "cuda")
        (m, k), (bm, bk) = packed.shape, packed.block
        gm, _ = packed.grid
        self.tile = walk == "tile"
        self.block_m = _pow2(bm)
        if self.tile:
            row_ptr, col, w, kept = self._tile_layout(packed)
        else:
            row_ptr, col, w, kept = self._column_layout(packed)
        dev = self.device
        self.row_ptr = row_ptr.to(torch.int32).contiguous().to(dev)
        self.col = col.to(torch.int32).contiguous().to(dev)
        self._weights = {torch.float32: w.contiguous().to(dev)}
        self.bias = None if bias is None else bias.detach().float().reshape(m).contiguous().to(dev)
        self.shape, self.block, self.gm, self.relu = (m, k), (bm, bk), gm, relu
        self.kept_columns = kept
        self.count_visits = False
        self.visited_columns = 0

    def _tile_layout(self, packed: BlockSparseWeight):
        (_, k), (bm, bk) = packed.shape, packed.block
        self.block_k = max(MIN_BLOCK_K, _pow2(bk))
        values = packed.values.float()
        if (bm, bk) != (self.block_m, self.block_k):  # pad to the dot's power-of-two shape
            values = torch.nn.functional.pad(values, (0, self.block_k - bk, 0, self.block_m - bm))
        widths = (k - packed.col_idx.long() * bk).clamp(max=bk)  # ragged last K block
        return packed.row_ptr, packed.col_idx, values, int(widths.sum())

    def _column_layout(self, packed: BlockSparseWeight):
        (_, k), (bm, bk) = packed.shape, packed.block
        gm, _ = packed.grid
        self.block_k = SIMD_BLOCK_K
        row_ptr, col_idx = packed.row_ptr.long(), packed.col_idx.long()
        kidx = (col_idx[:, None] * bk + torch.arange(bk)).reshape(-1)
        wk = packed.values.float().transpose(1, 2).reshape(-1, bm)
        wk = torch.nn.functional.pad(wk, (0, self.block_m - bm))
        real = kidx < k  # drop the zero padding of a ragged last K block
        owner = torch.repeat_interleave(torch.arange(gm), row_ptr[1:] - row_ptr[:-1])
        per_row = torch.bincount(owner.repeat_interleave(bk)[real], minlength=gm)
        kptr = torch.zeros(gm + 1, dtype=torch.int64)
        kptr[1:] = per_row.cumsum(0)
        return kptr, kidx[real], wk[real], int(real.sum())

    @property
    def kernels(self) -> ModuleType:
        """The kernel module (not stored, so layers stay picklable and copyable)."""
        return _kernels()

    def weight(self, dtype: torch.dtype) -> Tensor:
        """The walked weights in ``dtype`` (converted once, then kept on the device)."""
        if dtype not in self._weights:
            self._weights[dtype] = self._weights[torch.float32].to(dtype)
        return self._weights[dtype]

    def prepare(self, x: Tensor, dims: int, channels: int, what: str) -> Tensor:
        """``x`` checked and on the device in the compute dtype (strides kept when possible)."""
        check_input(x, dims, channels, what, DTYPES)
        dtype = compute_dtype(x, self.device)
        if dtype not in DTYPES:
            raise UserError(
                f"compiled {what} cannot compute in {dtype}",
                "use float32, float16 or bfloat16 (autocast dtype)",
            )
        return x.to(device=self.device, dtype=dtype)

    def launch(self, x: Tensor, out: Tensor, n: int, geometry: dict, xs: tuple, os_: tuple):
        """Run the kernel over ``n`` GEMM columns; strides ``xs``/``os_`` are (b, c, h, w)."""
        for t in (x, out):  # the kernel computes element offsets in 32-bit integers
            reach = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(),
                                                                        strict=True))
            if reach >= 2**31:
                raise UserError(
                    f"tensor {tuple(t.shape)} spans {reach} elements, more than one launch "
                    "addresses (2^31)",
                    "split the batch into smaller ones",
                )
        counter = torch.zeros(1, dtype=torch.int32, device=self.device)
        gm = self.gm
        m, k = self.shape
        g = geometry
        dtype = x.dtype
        precision = fp32_precision(self.kind) if dtype == torch.float32 else "ieee"
        upcast = interpreted() and dtype == torch.bfloat16  # see the kernel module's header
        w = self.weight(dtype)
        kernel = self.kernels.skip_conv_gemm
        kernel[lambda meta: (gm * -(-n // meta["BLOCK_N"]),)](
            x, out, self.bias if self.bias is not None else w, self.row_ptr, self.col, w, counter,
            m, n, k, self.block[0], self.block[1], gm,
            g["h"], g["w"], g["oh"], g["ow"], *g["stride"], *g["padding"], *g["dilation"],
            *xs, *os_,
            KH=g["kernel_size"][0], KW=g["kernel_size"][1], TILE=self.tile, PRECISION=precision,
            UPCAST=upcast,
            HAS_BIAS=self.bias is not None, RELU=self.relu, COUNT=self.count_visits,
            BLOCK_M=self.block_m, BLOCK_K=self.block_k,
        )  # fmt: skip
        if self.count_visits:
            self.visited_columns += int(counter.item())

    def tiles(self, n: int) -> int:
        """Programs along N for ``n`` columns with the configuration last chosen (for tests)."""
        kernel = self.kernels.skip_conv_gemm
        config = getattr(kernel, "best_config", None) or kernel.configs[0]
        block_n = config.kwargs["BLOCK_N"]
        return -(-n // block_n)


_POINT = {"kernel_size": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1),
          "h": 1, "w": 1, "oh": 1, "ow": 1}  # fmt: skip


class TritonLinear(TritonGemm):
    """Forward of a packed Linear layer: [B, K] -> [B, M], the 1x1 convolution of a 1x1 image."""

    def __call__(self, x: Tensor) -> Tensor:
        x = self.prepare(x, 2, self.shape[1], "Linear")
        n, m = x.shape[0], self.shape[0]
        out = torch.empty(n, m, device=self.device, dtype=x.dtype)
        self.launch(x, out, n, _POINT, (x.stride(0), x.stride(1), 0, 0),
                    (out.stride(0), out.stride(1), 0, 0))  # fmt: skip
        return out


class TritonConv2d(TritonGemm):
    """Forward of a packed groups=1 Conv2d by implicit GEMM: NCHW or channels_last in, the same
    memory format out (as ``nn.Conv2d``)."""

    kind = "conv"

    def __init__(self, packed, bias, relu, geometry: ConvGeometry, walk: str = "tile") -> None:
        super().__init__(packed, bias, relu, walk)
        self.geometry = geometry
        self.in_channels = geometry.in_channels
        self.conv = dict(kernel_size=geometry.kernel_size, stride=geometry.stride,
                         padding=geometry.padding, dilation=geometry.dilation)  # fmt: skip

    def __call__(self, x: Tensor) -> Tensor:
        x = self.prepare(x, 4, self.in_channels, "Conv2d")
        b, _, h, w = x.shape
        oh, ow = self.geometry.check_input(h, w)
        last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        fmt = torch.channels_last if last else torch.contiguous_format
        out = torch.empty(b, self.shape[0], oh, ow, device=self.device, dtype=x.dtype,
                          memory_format=fmt)  # fmt: skip
        geometry = dict(self.conv, h=h, w=w, oh=oh, ow=ow)
        self.launch(x, out, b * oh * ow, geometry, x.stride(), out.stride())
        return out


@BACKENDS.register("triton")
class TritonBackend(Backend):
    """Triton implicit-GEMM block-sparse kernels for CUDA/ROCm GPUs (interpreter mode for tests).

    The tile and dense variants walk whole ``MWG x KWG`` blocks of the target; the SIMD variant
    packs the kept ``R x simd_k`` vectors of a row-group into full-size dots.
    """

    name = "triton"
    dtypes = DTYPES

    def check_available(self) -> None:
        _check_available()

    @property
    def device(self) -> str:
        if interpreted():
            return "cpu (triton interpreter)"
        return torch.cuda.get_device_name() if torch.cuda.is_available() else "none"

    def linear(self, packed: BlockSparseWeight, bias: Tensor | None, target: Target, *,
               variant: str, relu: bool = False) -> Forward:  # fmt: skip
        walk = "columns" if variant == "simd" else "tile"
        return TritonLinear(for_variant(packed, target, variant), bias, relu, walk)

    def conv2d(self, packed: BlockSparseWeight, bias: Tensor | None, target: Target, *,
               variant: str, geometry: ConvGeometry, relu: bool = False) -> Forward:  # fmt: skip
        check_conv_shape(packed, geometry)
        walk = "columns" if variant == "simd" else "tile"
        return TritonConv2d(for_variant(packed, target, variant), bias, relu, geometry, walk)
