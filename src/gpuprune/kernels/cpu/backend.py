"""The cpu backend: a compiled C kernel that walks only the kept K blocks (OpenMP, SIMD).

Each layer is lowered to ``Out[M, N] = W[M, K] x X[K, N]``. The input is written (im2col for a
convolution, a transpose for a linear layer) into panel-major ``X`` slabs of ``NR`` columns; the
kernel then gives each (N-panel, row-block) task to a thread, which walks the row-block's kept
blocks only, with bias and ReLU fused into the store. See docs/design/cpu-backend.md.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch
from torch import Tensor, nn

from gpuprune.errors import UserError
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels.backends import (
    BACKENDS,
    LayerClassBackend,
    check_input,
)
from gpuprune.kernels.cpu import buffers, ops
from gpuprune.kernels.cpu.build import load_library
from gpuprune.kernels.format import BlockSparseWeight


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _on_cpu(x: Tensor) -> Tensor:
    if x.device.type != "cpu":
        raise UserError(
            f"the cpu backend got an input on {x.device}", "move it with x.cpu() before the layer"
        )
    return x.contiguous()


class CpuGemm:
    """A packed weight ready for the kernel: ``out = act(W x X + bias)``, W in BSR.

    Attributes:
        count_visits: when True, every call adds the number of kept blocks the kernel walked
            (once per N-panel) to :attr:`visited_blocks` (instrumentation for tests).
        visited_blocks: running count of blocks walked, summed over N-panels and calls.
    """

    def __init__(self, packed: BlockSparseWeight, bias: Tensor | None, relu: bool) -> None:
        self.panel = int(self.lib.gp_panel_width())  # NR: columns per X panel
        self.shape = packed.shape
        self.block = packed.block
        self.gm, gk = packed.grid
        self.k_pad = gk * packed.block[1]
        self.row_ptr = packed.row_ptr.to(torch.int32).contiguous()
        self.col_idx = packed.col_idx.to(torch.int32).contiguous()
        # k-major blocks: the bm row weights of one k sit side by side for the broadcasts
        self.wt = packed.values.to(torch.float32).transpose(1, 2).contiguous()
        m = packed.shape[0]
        self.bias = None
        if bias is not None:
            self.bias = bias.detach().to(device="cpu", dtype=torch.float32).reshape(m).contiguous()
        self.relu = relu
        self.nnzb = packed.nnzb
        self.count_visits = False
        self.visited_blocks = 0

    @property
    def lib(self) -> ctypes.CDLL:
        """The loaded kernel library (not stored, so layers stay picklable and copyable)."""
        return load_library()

    def panels(self, n: int) -> int:
        """N-panels the kernel cuts ``n`` output columns into."""
        return -(-n // self.panel)

    def _run(self, op: Callable[..., Tensor], direct: Callable[..., Tensor], x: Tensor,
             args: tuple) -> Tensor:  # fmt: skip
        """``op(*args)`` (the custom op) while ``x`` is traced by torch.compile/export, else the
        kernel called directly, counting visited blocks when ``count_visits`` is on."""
        if ops.tracing(x):
            return op(*args)
        counter = torch.zeros(1, dtype=torch.int64) if self.count_visits else None
        out = direct(*args, visits=counter)
        if counter is not None:
            self.visited_blocks += int(counter.item())
        return out


class CpuLinear(CpuGemm):
    """Forward of a packed Linear layer: [B, K] -> [B, M]."""

    def __call__(self, x: Tensor) -> Tensor:
        check_input(x, 2, self.shape[1], "Linear")
        x = _on_cpu(x)
        args = (x, self.wt, self.row_ptr, self.col_idx, self.bias, self.shape[0], *self.block,
                self.relu)  # fmt: skip
        return self._run(torch.ops.gpuprune.cpu_linear, ops.linear, x, args)


class CpuConv2d(CpuGemm):
    """Forward of a packed groups=1 Conv2d: NCHW in, NCHW out.

    ``pool``: "floor" or "ceil" for a 2x2 stride-2 max pool in that mode after the activation,
    fused into the store (None: no pool).
    ``mode`` picks the kernel's schedule: 0 automatic, 1 im2col fused per N-panel, 2 whole
    im2col buffer first, 3 (one image, few panels) every thread mapping each panel for its own
    share of the row-blocks (all give the same result; exposed for tests and benchmarks).
    """

    def __init__(
        self,
        packed: BlockSparseWeight,
        bias: Tensor | None,
        relu: bool,
        in_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        pool: str | None = None,
    ) -> None:
        super().__init__(packed, bias, relu)
        # K blocks some row-block keeps: im2col skips the rest (e.g. channels pruned upstream)
        self.used = torch.zeros(self.k_pad // self.block[1], dtype=torch.uint8)
        self.used[self.col_idx.long()] = 1
        self.in_channels = in_channels
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.dilation = tuple(dilation)
        if pool not in ops.POOL_CODES:
            raise ValueError(f"pool {pool!r} is not one of {list(ops.POOL_CODES)}")
        self.pool = pool
        self._pool_code = ops.POOL_CODES[pool]
        self.geometry = ConvGeometry(in_channels, self.kernel_size, self.stride, self.padding,
                                     self.dilation)  # fmt: skip
        self.mode = 0
        # per input shape seen: (output shape, the kernel's integer arguments as an int64 array,
        # its tap tables). Tensors, not pointers: a copied layer copies them with it.
        self._shapes: dict[torch.Size, tuple[torch.Size, Tensor, Tensor]] = {}

    def _geometry_list(self) -> list[int]:
        return [*self.kernel_size, *self.stride, *self.padding, *self.dilation]

    def _fast(self, x: Tensor, residual: Tensor | None, residual_relu: bool) -> Tensor | None:
        """The eager call for an input shape already checked once: no per-call Python beyond
        the ctypes call (at batch 1 a small layer's kernel takes tens of microseconds)."""
        known = self._shapes.get(x.shape)
        if known is None or x.dtype != torch.float32 or not x.is_contiguous() or not x.is_cpu:
            return None
        out_shape, args, tables = known
        if residual is not None and (
            type(residual) is not Tensor or residual.shape != out_shape
            or residual.dtype != torch.float32 or not residual.is_contiguous()
            or not residual.is_cpu
        ):  # fmt: skip
            return None
        out = buffers.POOL.empty(out_shape)  # large outputs reuse memory: no page faults
        status = self.lib.gp_conv2d(
            args.data_ptr(), x.data_ptr(), self.row_ptr.data_ptr(), self.col_idx.data_ptr(),
            self.wt.data_ptr(), _ptr(self.bias), out.data_ptr(), self.used.data_ptr(),
            tables.data_ptr(), torch.get_num_threads(), self.mode, None, _ptr(residual),
            int(residual_relu),
        )  # fmt: skip
        ops.check_status(status)
        return out

    def __call__(self, x: Tensor, residual: Tensor | None = None,
                 residual_relu: bool = False) -> Tensor:  # fmt: skip
        """The convolution; with ``residual`` (shaped like the output, no pool) the result is
        ``residual + conv``, then a ReLU when ``residual_relu``: a residual block's tail, added
        in the kernel's store on the eager path."""
        if residual is not None and self.pool is not None:
            raise ValueError("a residual cannot be added to a pooled convolution")
        if not self.count_visits and type(x) is Tensor and not torch.compiler.is_compiling():
            out = self._fast(x, residual, residual_relu)
            if out is not None:
                return out
        out = self._conv(x)
        if residual is None:
            return out
        out = out + residual  # traced, or the first call of a shape: PyTorch adds
        return torch.relu(out) if residual_relu else out

    def _conv(self, x: Tensor) -> Tensor:
        check_input(x, 4, self.in_channels, "Conv2d")
        x = _on_cpu(x)
        b, c, h, w = x.shape
        oh, ow = self.geometry.check_input(h, w)
        if self.pool == "floor" and (oh < 2 or ow < 2):
            raise UserError(
                f"input {h}x{w} gives a {oh}x{ow} conv output, smaller than the 2x2 max pool "
                "fused after it", "feed the input size the model was built for",
            )  # fmt: skip
        geometry = self._geometry_list()
        args = (x, self.wt, self.row_ptr, self.col_idx, self.bias, self.used, geometry,
                self.shape[0], *self.block, self.relu, self.mode, self._pool_code)  # fmt: skip
        out = self._run(torch.ops.gpuprune.cpu_conv2d, ops.conv2d, x, args)
        if ops.tracing(x):
            return out
        if b * c * h * w < 2**31:  # one kernel call (bigger inputs are split by ops.conv2d)
            call = ops.conv_args(x.shape, geometry, self._pool_code, self.shape[0], self.gm,
                                 *self.block, self.k_pad, self.relu)  # fmt: skip
            # tap tables are built once per input shape, then every call reads them
            self._shapes[x.shape] = (out.shape, call, ops.conv_tables(call))
        return out


@BACKENDS.register("cpu")
class CpuBackend(LayerClassBackend):
    """Compiled C kernel (OpenMP threads, SIMD micro-tiles) that skips pruned blocks on the CPU."""

    name = "cpu"
    fuses_maxpool = True
    fuses_residual = True
    linear_layer = CpuLinear
    conv_layer = CpuConv2d

    def check_available(self) -> None:
        load_library()

    def conv_chain(self, layers: list) -> Callable[[Tensor], Tensor | None] | None:
        from gpuprune.kernels.cpu.chain import CpuConvChain

        return CpuConvChain(layers) if all(type(la) is CpuConv2d for la in layers) else None

    def block_chain(self, blocks: list) -> Callable[[Tensor], Tensor | None] | None:
        from gpuprune.kernels.cpu.chain import Block, CpuBlockChain

        chain = CpuBlockChain([Block(tuple(path), shortcut, relu)
                               for path, shortcut, relu in blocks])  # fmt: skip
        if not all(type(la) is CpuConv2d and la.pool is None for la in chain.layers):
            return None
        return chain

    def max_pool(self, pool: nn.Module) -> nn.Module | None:
        from gpuprune.kernels.cpu.pool import CpuMaxPool2d

        return CpuMaxPool2d(pool) if CpuMaxPool2d.supports(pool) else None
