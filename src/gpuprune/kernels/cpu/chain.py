"""Consecutive cpu convolutions run by one native call (``gp_conv_chain``).

At batch 1 a small convolution's kernel takes tens of microseconds, and the Python around each
call (the module, the ctypes call, the output tensor) about ten more: a sixth of VGG16's
forward. A :class:`CpuConvChain` runs a whole run of layers, each reading the one before's
output, in one call; the intermediates live in the kernel's per-thread scratch and never become
tensors. The per-layer arguments are the ones each :class:`CpuConv2d` prepared for its input
shape, so the chain computes exactly what the layers would one by one (tested).
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor

from gpuprune.kernels.cpu import buffers, ops
from gpuprune.kernels.cpu.backend import CpuConv2d


class _Call(ctypes.Structure):
    """``gp_chain_call`` in bsr_kernel.c."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("geom", "row_ptr", "col_idx", "wt", "bias", "used", "tables")] + [
                ("out_floats", ctypes.c_int64), ("mode", ctypes.c_int64)]  # fmt: skip


class CpuConvChain:
    """Call ``layers`` (CpuConv2d forwards, in order) as one: ``chain(x)`` is
    ``layers[-1](...layers[0](x))``, or None when it cannot run ``x`` natively (the caller then
    calls the layers itself).

    The first input of each shape goes through the layers one by one, which checks it and
    prepares every layer's arguments; later inputs of that shape take one native call.
    """

    def __init__(self, layers: list[CpuConv2d]) -> None:
        self.layers = list(layers)
        # per input shape: (the call array, its length, the output shape, the tensors the array
        # points into: held here, so a layer that rebuilds its own entry frees nothing we read)
        self._shapes: dict[torch.Size, tuple[ctypes.Array, int, torch.Size, list[Tensor]]] = {}

    def __getstate__(self) -> dict:
        # the call arrays hold raw pointers: a copy prepares its own
        return {"layers": self.layers, "_shapes": {}}

    def _prepare(self, x: Tensor) -> Tensor:
        """Run the layers one by one and keep the chain's arguments for ``x.shape``."""
        shapes, y = [], x
        for layer in self.layers:
            shapes.append(y.shape)
            y = layer(y)
        known = [layer._shapes.get(s) for layer, s in zip(self.layers, shapes, strict=True)]
        if all(k is not None for k in known):  # each layer took its one-call path
            calls = (_Call * len(self.layers))()
            held: list[Tensor] = []
            for call, layer, (out_shape, args, tables) in zip(calls, self.layers, known,
                                                              strict=True):  # fmt: skip
                held += [args, tables, layer.row_ptr, layer.col_idx, layer.wt, layer.used]
                held += [] if layer.bias is None else [layer.bias]
                call.geom, call.tables = args.data_ptr(), tables.data_ptr()
                call.row_ptr, call.col_idx = layer.row_ptr.data_ptr(), layer.col_idx.data_ptr()
                call.wt, call.used = layer.wt.data_ptr(), layer.used.data_ptr()
                call.bias = None if layer.bias is None else layer.bias.data_ptr()
                call.out_floats, call.mode = math.prod(out_shape), layer.mode
            self._shapes[x.shape] = (calls, len(self.layers), y.shape, held)
        return y

    def __call__(self, x: Tensor) -> Tensor | None:
        if (type(x) is not Tensor or x.dtype != torch.float32 or not x.is_cpu
                or torch.compiler.is_compiling()
                or any(layer.count_visits for layer in self.layers)):  # fmt: skip
            return None
        x = x.contiguous()
        known = self._shapes.get(x.shape)
        if known is None:
            return self._prepare(x)
        calls, n, out_shape, _ = known
        out = buffers.POOL.empty(out_shape)
        ops.check_status(self.layers[0].lib.gp_conv_chain(
            n, ctypes.addressof(calls), x.data_ptr(), out.data_ptr(), torch.get_num_threads()))
        return out
