"""Consecutive cpu convolutions run by one native call (``gp_conv_chain``).

At batch 1 a small convolution's kernel takes tens of microseconds, and the Python around each
call (the module, the ctypes call, the output tensor) about ten more: a sixth of VGG16's
forward. A chain runs a whole run of layers in one call; the intermediates live in the kernel's
per-thread scratch and never become tensors. Two shapes of run:

* :class:`CpuConvChain`: convolutions each reading the one before's output (a VGG ``features``);
* :class:`CpuBlockChain`: residual blocks, each ``relu?(path(x) + shortcut(x))`` with the add
  (and the ReLU) in the last path convolution's store, as a fused block runs one by one.

The per-layer arguments are the ones each :class:`CpuConv2d` prepared for its input shape, so a
chain computes exactly what its layers would one by one (tested). The first input of each shape
goes through the layers one by one, which checks it and prepares every layer's arguments; later
inputs of that shape take one native call.

A batch with at least an image per thread runs image by image (:func:`by_image`) where every
layer of one image fills more than half a panel (:func:`half_panel`): the chain's program for
one image, each thread taking whole images, so no layer waits on the other threads and an
image's activations stay in its thread's caches instead of a batch's going to memory. A run of
plain convolutions whose deeper layers are smaller runs its wide head so and the rest on the
batch.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gpuprune.kernels.cpu import buffers, ops
from gpuprune.kernels.cpu.backend import CpuConv2d

IN, OUT, NONE = -1, -2, -3  # the chain's input and output buffers, no residual (bsr_kernel.c)
BUFFERS = 4  # scratch buffers a chain may name (CHAIN_BUFFERS)


class _Call(ctypes.Structure):
    """``gp_chain_call`` in bsr_kernel.c."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("geom", "row_ptr", "col_idx", "wt", "bias", "used", "tables")] + [
                (name, ctypes.c_int64) for name in
                ("out_floats", "mode", "src", "dst", "res", "res_relu")]  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One convolution of a chain's program: reads buffer ``src``, writes ``dst``, adds ``res``
    (NONE: nothing) in its store, then a ReLU when ``res_relu``."""

    layer: CpuConv2d
    src: int
    dst: int
    res: int = NONE
    res_relu: bool = False


def by_image(images: int, threads: int) -> bool:
    """Whether a batch may run whole images per thread (``gp_conv_chain_images``) rather than
    each layer split over the threads: with at least an image per thread. It then does where
    the run's one-image program is ``wide`` (:meth:`_Chain._image_program`), or, for a run of
    plain convolutions, its wide head does (:meth:`CpuConvChain._split`). Each thread runs
    the chain on one image at a time with no barrier between layers and that image's
    activations in its own caches (ResNet-50 at 75% tile, 2 threads: batch 16 0.87x the time,
    batch 4 0.95x). One thread has no barriers to save (docs/design/cpu-backend.md)."""
    return threads >= 2 and images >= threads


class _Program:
    """The native call array of a list of steps for one input shape, and the tensors it points
    into (held here, so a layer that rebuilds its own entry frees nothing the array reads)."""

    def __init__(self, steps: list[Step], in_shapes: list[torch.Size],
                 out_shape: torch.Size) -> None:  # fmt: skip
        self.calls = (_Call * len(steps))()
        self.held: list[Tensor] = []
        pixels = []
        for call, step, shape in zip(self.calls, steps, in_shapes, strict=True):
            layer = step.layer
            out, args, tables = layer._shapes[shape]
            pixels.append(ops.out_pixels(args))
            self.held += [args, tables, layer.row_ptr, layer.col_idx, layer.wt, layer.used]
            self.held += [] if layer.bias is None else [layer.bias]
            call.geom, call.tables = args.data_ptr(), tables.data_ptr()
            call.row_ptr, call.col_idx = layer.row_ptr.data_ptr(), layer.col_idx.data_ptr()
            call.wt, call.used = layer.wt.data_ptr(), layer.used.data_ptr()
            call.bias = None if layer.bias is None else layer.bias.data_ptr()
            call.out_floats, call.mode = math.prod(out), layer.mode
            call.src, call.dst, call.res, call.res_relu = (step.src, step.dst, step.res,
                                                           int(step.res_relu))  # fmt: skip
        self.n, self.in_shapes, self.out_shape = len(steps), list(in_shapes), out_shape
        # the leading convolutions that fill more than half a panel (of one image: what running
        # image by image asks), and whether that is all of them
        half = half_panel(steps[0].layer)
        self.wide_head = next((i for i, p in enumerate(pixels) if p <= half), self.n)
        self.wide = self.wide_head == self.n

    def run(self, lib: ctypes.CDLL, x: Tensor) -> Tensor:
        out = buffers.POOL.empty(self.out_shape)
        ops.check_status(lib.gp_conv_chain(self.n, ctypes.addressof(self.calls), x.data_ptr(),
                                           out.data_ptr(), torch.get_num_threads()))  # fmt: skip
        return out

    def run_images(self, lib: ctypes.CDLL, x: Tensor) -> Tensor:
        """Run every image of ``x`` through this one-image program, whole images per thread."""
        out = buffers.POOL.empty((x.shape[0], *self.out_shape[1:]))
        ops.check_status(lib.gp_conv_chain_images(
            self.n, ctypes.addressof(self.calls), x.data_ptr(), out.data_ptr(), x.shape[0],
            x[0].numel(), math.prod(self.out_shape), torch.get_num_threads()))  # fmt: skip
        return out


class _Chain:
    """What both chains share: the checks on the input, the per-shape programs, pickling."""

    layers: list[CpuConv2d]

    def __init__(self) -> None:
        self._shapes: dict[torch.Size, _Program] = {}
        self._no_program: set[torch.Size] = set()  # one-image shapes that prepared none

    def __getstate__(self) -> dict:
        # the call arrays hold raw pointers: a copy prepares its own
        return {**self.__dict__, "_shapes": {}, "_no_program": set()}

    def _prepare(self, x: Tensor) -> Tensor:  # pragma: no cover - each chain has its own
        raise NotImplementedError

    def _image_program(self, x: Tensor) -> _Program | None:
        """The one-image program for running ``x`` image by image, or None where the batch
        runs whole: too few images (:func:`by_image`), or no program for one image. It runs
        whole images only where it is ``wide``; else a chain may run part of it so
        (:meth:`_split`)."""
        if not by_image(x.shape[0], torch.get_num_threads()):
            return None
        one = torch.Size((1, *x.shape[1:]))
        if one not in self._shapes and one not in self._no_program:
            self._prepare(x[:1])
            if one not in self._shapes:  # not every layer took it natively: never again
                self._no_program.add(one)
        return self._shapes.get(one)

    def _split(self, x: Tensor) -> Tensor | None:
        """``x`` through a run whose image is not wide, in parts, or None: by layer (a chain
        that cannot split)."""
        return None

    def __call__(self, x: Tensor) -> Tensor | None:
        if (type(x) is not Tensor or x.dtype != torch.float32 or not x.is_cpu
                or torch.compiler.is_compiling()
                or any(layer.count_visits for layer in self.layers)):  # fmt: skip
            return None
        x = x.contiguous()
        image = self._image_program(x)
        if image is not None and image.wide:
            return image.run_images(self.layers[0].lib, x)
        if image is not None:
            y = self._split(x)
            if y is not None:
                return y
        program = self._shapes.get(x.shape)
        if program is None:
            return self._prepare(x)
        return program.run(self.layers[0].lib, x)


class CpuConvChain(_Chain):
    """Call ``layers`` (CpuConv2d forwards, in order) as one: ``chain(x)`` is
    ``layers[-1](...layers[0](x))``, or None when it cannot run ``x`` natively (the caller then
    calls the layers itself)."""

    def __init__(self, layers: list[CpuConv2d]) -> None:
        super().__init__()
        self.layers = list(layers)
        self._parts: dict[torch.Size, tuple[_Program, _Program] | tuple[()]] = {}

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_parts": {}}  # programs: raw pointers, as above

    def _prepare(self, x: Tensor) -> Tensor:
        """Run the layers one by one and keep the chain's program for ``x.shape``."""
        shapes, y = [], x
        for layer in self.layers:
            shapes.append(y.shape)
            y = layer(y)
        if all(s in layer._shapes for layer, s in zip(self.layers, shapes, strict=True)):
            # each layer took its one-call path: chain them
            self._shapes[x.shape] = _Program(_in_turn(self.layers), shapes, y.shape)
        return y

    def _split(self, x: Tensor) -> Tensor | None:
        """The leading layers that are wide for one image run image by image, the rest on the
        batch (VGG16 at 32x32 on AVX-512: the seven layers down to 8x8 per image, then the 4x4
        and 2x2 ones, under half a panel per image, on the batch)."""
        parts = self._parts.get(x.shape)
        if parts is None:
            if x.shape not in self._shapes:
                return self._prepare(x)  # the batch shapes of every layer, this call's output
            parts = self._parts[x.shape] = self._split_programs(x.shape)
        if not parts:
            return None
        head, tail = parts
        lib = self.layers[0].lib
        return tail.run(lib, head.run_images(lib, x))

    def _split_programs(self, batch: torch.Size) -> tuple[_Program, _Program] | tuple[()]:
        """(the wide head for one image, the rest for the batch), from the whole run's programs
        for one image and for the batch; () where the first layer is already under half a panel
        per image."""
        image, whole = self._shapes[torch.Size((1, *batch[1:]))], self._shapes[batch]
        k = image.wide_head
        if k == 0:
            return ()
        head = _Program(_in_turn(self.layers[:k]), image.in_shapes[:k], image.in_shapes[k])
        tail = _Program(_in_turn(self.layers[k:]), whole.in_shapes[k:], whole.out_shape)
        return head, tail


def half_panel(layer: CpuConv2d) -> int:
    """Output pixels per image a convolution must exceed to run image by image: half a panel.
    Below it the kernel has a vector or two per k (or a narrow panel), and a 4-row SIMD-group
    vector's per-k index, row-pointer and prefetch loads cost what its multiply-adds do, where
    the batch fills whole panels (VGG16 w0.5 at 32x32, simd@75% batch 16: by image 1.13-1.16x
    the time; its 4x4 and 2x2 layers on the batch, the rest by image, 0.965-0.973x)."""
    return layer.panel // 2


def _in_turn(layers: list[CpuConv2d]) -> list[Step]:
    """Steps running ``layers`` one after another through two scratch buffers in turn."""
    last = len(layers) - 1
    return [Step(layer, IN if i == 0 else (i - 1) % 2, OUT if i == last else i % 2)
            for i, layer in enumerate(layers)]  # fmt: skip


@dataclass(frozen=True)
class Block:
    """A residual block as the chain runs it: ``relu?(path(x) + shortcut(x))``, where the path's
    convolutions apply their own ReLUs and ``shortcut`` is a convolution or None (x itself)."""

    path: tuple[CpuConv2d, ...]
    shortcut: CpuConv2d | None
    relu: bool


class CpuBlockChain(_Chain):
    """Call consecutive residual ``blocks`` as one: ``chain(x)`` is ``blocks[-1](...(x))``, or
    None when it cannot run ``x`` natively.

    Buffers: a block's input stays in its buffer until its last reader (the first path
    convolution and the shortcut convolution) has run; the shortcut is computed right after the
    first path convolution, so the input's buffer is free again as early as possible; the last
    path convolution writes over its residual (the store reads each element just before it
    writes it), or, where the residual is the chain's input or the conv's own input, into a free
    buffer. At most three buffers are live at once (two path outputs and the input or the
    shortcut's), for any path length (property-tested).
    """

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.blocks = list(blocks)
        self.layers = [c for b in self.blocks for c in (*b.path, *([b.shortcut] if b.shortcut
                                                                    else []))]  # fmt: skip

    @staticmethod
    def program(blocks: list[Block], shapes: list[list[torch.Size]]) -> tuple[list[Step], list]:
        """The steps of ``blocks`` and each step's input shape; ``shapes[b]`` lists block b's
        path inputs, then its shortcut's."""
        steps: list[Step] = []
        step_shapes: list = []
        free = list(range(BUFFERS))

        def run(layer: CpuConv2d, shape, src: int, dst: int, res: int = NONE,
                relu: bool = False) -> int:  # fmt: skip
            steps.append(Step(layer, src, dst, res, relu))
            step_shapes.append(shape)
            return dst

        def release(*bufs: int) -> None:
            free.extend(b for b in bufs if b >= 0 and b not in free)

        a = IN  # the current block's input
        for b, (block, ins) in enumerate(zip(blocks, shapes, strict=True)):
            n = len(block.path)
            y, side = a, a  # side: the residual (the input itself unless a shortcut conv)
            input_read = False  # the input's readers have all run (its buffer may be reused)
            for i, layer in enumerate(block.path[:-1]):
                y_next = run(layer, ins[i], y, free.pop(0))
                if y != a or input_read:
                    release(y)  # an intermediate, read for the last time
                y = y_next
                if i == 0 and block.shortcut is not None:  # the input's other reader, early
                    side = run(block.shortcut, ins[n], a, free.pop(0))
                    release(a)
                    input_read = True
            if n == 1 and block.shortcut is not None:
                side = run(block.shortcut, ins[n], a, free.pop(0))
            # the output: over its residual where that is a scratch buffer the last conv does
            # not read as its input (a one-conv block with the input as shortcut reads it)
            if b == len(blocks) - 1:
                dst = OUT
            else:
                dst = side if side >= 0 and side != y else free.pop(0)
            run(block.path[-1], ins[n - 1], y, dst, side, block.relu)
            release(*(buf for buf in (a, y, side) if buf != dst))
            a = dst
        return steps, step_shapes

    def _prepare(self, x: Tensor) -> Tensor:
        """Run the blocks one layer at a time (as a fused block's forward does) and keep the
        chain's program for ``x.shape``."""
        shapes, y = [], x
        for block in self.blocks:
            ins, h = [], y
            for layer in block.path[:-1]:
                ins.append(h.shape)
                h = layer(h)
            ins.append(h.shape)
            side = y
            if block.shortcut is not None:
                ins.append(y.shape)
                side = block.shortcut(y)
            shapes.append(ins)
            y = block.path[-1](h, residual=side, residual_relu=block.relu)
        steps, step_shapes = self.program(self.blocks, shapes)
        if all(s in step.layer._shapes for step, s in zip(steps, step_shapes, strict=True)):
            self._shapes[x.shape] = _Program(steps, step_shapes, y.shape)
        return y
