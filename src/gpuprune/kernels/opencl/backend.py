"""The OpenCL backend: packed weights uploaded once, one skip-GEMM launch per forward.

Host-side work per layer, done once: check the packing against the variant's block, turn it
into the arrays the kernel walks (for "simd" also the per-tile union of kept K slabs) and upload
them. Per forward: upload the input, launch, read the output back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.gemm import to_blocks
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels.backends import (
    BACKENDS,
    Backend,
    check_conv_shape,
    check_input,
    check_variant,
)
from gpuprune.kernels.format import BlockSparseWeight
from gpuprune.kernels.opencl.context import (
    ClDevice,
    build_error,
    get_device,
    get_usable_device,
    import_pyopencl,
)
from gpuprune.kernels.opencl.programs import build_program

VARIANT_IDS = {"dense": 0, "tile": 1, "simd": 2}
DTYPES = (torch.float32, torch.float16)  # float16: half storage, float32 accumulation (HALF=1)
NUMPY = {torch.float32: np.float32, torch.float16: np.float16}


@dataclass(frozen=True)
class KernelArrays:
    """What one layer's kernel walks, as host arrays (see skipgemm.cl)."""

    values: np.ndarray  # float32, kept blocks back to back
    row_ptr: np.ndarray  # int32, per row-block (tile or SIMD row-group) offsets into col_idx
    col_idx: np.ndarray  # int32, kept block index along K
    slab_ptr: np.ndarray  # int32, per tile offsets into slab_idx (simd only)
    slab_idx: np.ndarray  # int32, K slabs any row-group of the tile keeps (simd only)
    rows: int  # row-blocks counted by the instrumentation (tiles or SIMD row-groups)


def _i32(t: Tensor | np.ndarray) -> np.ndarray:
    a = t.numpy() if isinstance(t, Tensor) else t
    return np.ascontiguousarray(a, dtype=np.int32)


def kernel_arrays(packed: BlockSparseWeight, target: Target, variant: str) -> KernelArrays:
    """Lay out a packed weight for the ``variant`` kernel on ``target``."""
    check_variant(variant, packed, target)
    m, _ = packed.shape
    mwg, kwg = target.tile_block()
    m_tiles = -(-m // mwg)
    empty = np.zeros(1, dtype=np.int32)
    if variant == "dense":
        # Every (MWG, KWG) block kept, zero or not: the same kernel's dense baseline.
        blocks = to_blocks(packed.to_dense(), (mwg, kwg))
        gm, gk = blocks.shape[:2]
        return KernelArrays(
            values=blocks.reshape(-1).numpy().astype(np.float32),
            row_ptr=_i32(np.arange(gm + 1) * gk),
            col_idx=_i32(np.tile(np.arange(gk), gm)),
            slab_ptr=empty,
            slab_idx=empty,
            rows=gm,
        )
    if variant == "tile":
        return KernelArrays(
            values=packed.values.reshape(-1).numpy().astype(np.float32),
            row_ptr=_i32(packed.row_ptr),
            col_idx=_i32(packed.col_idx),
            slab_ptr=empty,
            slab_idx=empty,
            rows=packed.grid[0],
        )
    # simd: pad the row-group list to whole tiles (ragged M), then the slabs each tile visits.
    groups = mwg // target.simd_rows
    row_ptr = packed.row_ptr.long()
    pad = m_tiles * groups + 1 - row_ptr.numel()
    row_ptr = torch.cat([row_ptr, row_ptr[-1:].repeat(pad)])
    slab_of = packed.col_idx.long() * target.simd_k // kwg
    slab_ptr, slab_idx = [0], []
    for mb in range(m_tiles):
        lo, hi = int(row_ptr[mb * groups]), int(row_ptr[(mb + 1) * groups])
        slab_idx.extend(torch.unique(slab_of[lo:hi]).tolist())
        slab_ptr.append(len(slab_idx))
    return KernelArrays(
        values=packed.values.reshape(-1).numpy().astype(np.float32),
        row_ptr=_i32(row_ptr),
        col_idx=_i32(packed.col_idx),
        slab_ptr=_i32(np.array(slab_ptr)),
        slab_idx=_i32(np.array(slab_idx or [0])),
        rows=m_tiles * groups,
    )


def _k_table(
    in_channels: int, kernel: tuple[int, int], dilation: tuple[int, int], h: int, w: int
) -> np.ndarray:
    """int4 per k = (kh, kw, c) (gemm.K_ORDER): input offset, row shift and column shift."""
    kh, kw = kernel
    c = np.tile(np.arange(in_channels), kh * kw)
    r = np.arange(kh).repeat(kw * in_channels) * dilation[0]
    s = np.tile(np.arange(kw).repeat(in_channels), kh) * dilation[1]
    table = np.zeros((c.size, 4), dtype=np.int32)
    table[:, 0], table[:, 1], table[:, 2] = c * h * w + r * w + s, r, s
    return table


@dataclass
class ClLayer:
    """A compiled layer forward on one OpenCL device (callable: NCHW or [B, K] in, same out)."""

    dev: ClDevice
    target: Target
    variant: str
    m: int
    k: int
    in_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    relu: bool
    linear: bool
    arrays: KernelArrays
    bias: np.ndarray
    instrument: bool = False
    counts: Tensor | None = None  # after a call with instrument: blocks visited [rows, n_tiles]
    _kernels: dict[torch.dtype, Any] = field(default_factory=dict)
    _buffers: dict[str, Any] = field(default_factory=dict)
    _ktabs: dict[tuple[int, int], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cl = import_pyopencl()
        self._kernel(torch.float32)  # build now: a driver that fails says so at compile time
        flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        for name in ("values", "row_ptr", "col_idx", "slab_ptr", "slab_idx"):
            host = getattr(self.arrays, name)
            if host.size == 0:  # OpenCL has no empty buffers
                host = np.zeros(1, dtype=host.dtype)
            self._buffers[name] = cl.Buffer(self.dev.context, flags, hostbuf=host)
        self._buffers["bias"] = cl.Buffer(self.dev.context, flags, hostbuf=self.bias)

    def _kernel(self, dtype: torch.dtype) -> Any:
        """The kernel for inputs of ``dtype`` (float16: the HALF=1 build), built once."""
        if dtype not in self._kernels:
            cl = import_pyopencl()
            defines = dict(self.target.defines())
            defines["VARIANT"] = VARIANT_IDS[self.variant]
            defines["COUNT"] = int(self.instrument)
            defines["HALF"] = int(dtype == torch.float16)
            try:
                self._kernels[dtype] = cl.Kernel(build_program(self.dev, defines), "skip_gemm")
            except cl.Error as err:  # a driver that rejects valid OpenCL 1.2 for these tiles
                raise UserError(
                    f"the OpenCL driver of {self.dev.name} could not build the kernel for "
                    f"target {self.target.name!r} ({build_error(err)})",
                    "try another target (gpuprune targets) or backend='cpu'",
                ) from None
        return self._kernels[dtype]

    def _values(self, dtype: torch.dtype) -> Any:
        """The packed weights on the device in ``dtype`` (float16 copy made on first use)."""
        name = "values" if dtype == torch.float32 else f"values_{dtype}"
        if name not in self._buffers:
            cl = import_pyopencl()
            host = self.arrays.values.astype(NUMPY[dtype])
            if host.size == 0:
                host = np.zeros(1, dtype=host.dtype)
            flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
            self._buffers[name] = cl.Buffer(self.dev.context, flags, hostbuf=host)
        return self._buffers[name]

    def _ktab(self, h: int, w: int) -> Any:
        if (h, w) not in self._ktabs:
            cl = import_pyopencl()
            table = _k_table(self.in_channels, self.kernel_size, self.dilation, h, w)
            flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
            self._ktabs[(h, w)] = cl.Buffer(self.dev.context, flags, hostbuf=table)
        return self._ktabs[(h, w)]

    def __call__(self, x: Tensor) -> Tensor:
        cl = import_pyopencl()
        if self.linear:
            check_input(x, 2, self.k, "Linear", DTYPES)
            batch, h, w, ho, wo = x.shape[0], 1, 1, 1, 1
        else:
            check_input(x, 4, self.in_channels, "Conv2d", DTYPES)
            batch, _, h, w = x.shape
            ho, wo = ConvGeometry(self.in_channels, self.kernel_size, self.stride, self.padding,
                                  self.dilation).check_input(h, w)  # fmt: skip
        n = batch * ho * wo
        if n == 0:
            return x.new_zeros((batch, self.m) if self.linear else (batch, self.m, ho, wo))
        if max(x.numel(), n * self.m) >= 2**31:  # the kernel indexes with 32-bit ints
            raise UserError(
                f"input {tuple(x.shape)} is too large for one launch (2^31 elements)",
                "split the batch into smaller ones",
            )
        t = self.target
        n_tiles, m_tiles = -(-n // t.nwg), -(-self.m // t.mwg)
        store = NUMPY[x.dtype]
        host_x = np.ascontiguousarray(x.detach().to("cpu").numpy(), dtype=store)
        ctx, queue = self.dev.context, self.dev.queue
        mf = cl.mem_flags
        x_buf = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=host_x)
        out = np.empty(batch * self.m * ho * wo, dtype=store)
        out_buf = cl.Buffer(ctx, mf.WRITE_ONLY, size=out.nbytes)
        if self.instrument:
            counter = np.zeros(max(self.arrays.rows * n_tiles, 1), dtype=np.int32)
            cnt_buf = cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=counter)
        else:  # the kernel was built without COUNT and never touches it
            cnt_buf = self._buffers["bias"]
        i32 = np.int32
        s, p = self.stride, self.padding  # (1, 1) and (0, 0) for Linear
        b = self._buffers
        self._kernel(x.dtype)(
            queue,
            (n_tiles * t.ndimc, m_tiles * t.mdimc),
            (t.ndimc, t.mdimc),
            i32(self.m), i32(n), i32(self.k),
            i32(self.in_channels), i32(h), i32(w), i32(wo), i32(ho * wo),
            i32(s[0]), i32(s[1]), i32(p[0]), i32(p[1]), i32(self.relu),
            x_buf, self._ktab(h, w), self._values(x.dtype), b["row_ptr"], b["col_idx"],
            b["slab_ptr"], b["slab_idx"], b["bias"], out_buf, cnt_buf,
        )
        cl.enqueue_copy(queue, out, out_buf)
        if self.instrument:
            cl.enqueue_copy(queue, counter, cnt_buf)
            self.counts = torch.from_numpy(counter[: self.arrays.rows * n_tiles]).reshape(
                self.arrays.rows, n_tiles
            )
        queue.finish()
        y = torch.from_numpy(out)
        return y.reshape(batch, self.m) if self.linear else y.reshape(batch, self.m, ho, wo)


@BACKENDS.register("opencl")
class OpenCLBackend(Backend):
    """Skip-GEMM kernels in OpenCL 1.2 (any GPU; CPUs through PoCL).

    Args:
        instrument: compile the block-visit counter in; each forward then sets ``layer.counts``.
    """

    name = "opencl"
    dtypes = DTYPES

    def __init__(self, instrument: bool = False) -> None:
        self.instrument = instrument

    def check_available(self) -> None:
        get_usable_device()

    @property
    def device(self) -> str:
        return get_device().name

    def _fits(self, dev: ClDevice, target: Target) -> None:
        d = dev.device
        local = target.local_mem_needed + 16 * target.nwg  # slabs + per-column tables
        if target.work_group_size > d.max_work_group_size or local > d.local_mem_size:
            raise UserError(
                f"target {target.name!r} needs {target.work_group_size} work-items and {local} B "
                f"of local memory per work-group; {d.name.strip()} allows "
                f"{d.max_work_group_size} and {d.local_mem_size} B",
                "compile for a target that fits this device (gpuprune targets; --target detect)",
            )

    def _layer(self, packed, bias, target, variant, relu, **conv) -> ClLayer:
        dev = get_usable_device()
        self._fits(dev, target)
        arrays = kernel_arrays(packed, target, variant)
        m = packed.shape[0]
        b = np.zeros(m, dtype=np.float32)
        if bias is not None:
            b[:] = bias.detach().to("cpu", torch.float32).reshape(m).numpy()
        return ClLayer(
            dev=dev, target=target, variant=variant, m=m, k=packed.shape[1],
            relu=relu, arrays=arrays, bias=b, instrument=self.instrument, **conv,
        )

    def linear(
        self,
        packed: BlockSparseWeight,
        bias: Tensor | None,
        target: Target,
        *,
        variant: str,
        relu: bool = False,
    ) -> ClLayer:
        return self._layer(
            packed, bias, target, variant, relu, in_channels=packed.shape[1],
            kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1), linear=True,
        )

    def conv2d(
        self,
        packed: BlockSparseWeight,
        bias: Tensor | None,
        target: Target,
        *,
        variant: str,
        geometry: ConvGeometry,
        relu: bool = False,
    ) -> ClLayer:
        check_conv_shape(packed, geometry)
        g = geometry
        return self._layer(
            packed, bias, target, variant, relu, in_channels=g.in_channels,
            kernel_size=g.kernel_size, stride=g.stride, padding=g.padding, dilation=g.dilation,
            linear=False,
        )

