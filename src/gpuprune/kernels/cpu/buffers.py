"""Reused output buffers for the cpu kernels' large outputs.

A fresh multi-megabyte tensor is memory the allocator maps from the OS on every call (glibc
serves big blocks with mmap and unmaps them on free), and the kernel then takes a page fault per
4 KiB page as it writes: a ResNet-50 batch of 16 spent a quarter of its forward in those faults
here. ONNX Runtime and OpenVINO keep an arena; so does this pool, for our own outputs only.

A buffer goes back to the pool when the last tensor using its memory is gone, views included:
the tensor is built with ``torch.from_numpy`` over an array whose base is a :class:`_Lease`, and
the lease returns its slab when the array (held by the tensor's storage) is freed. Nothing is
reused while anything can still read it.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

import numpy as np
import torch
from torch import Tensor

# below this a fresh tensor is cheap: glibc serves it from the heap, already mapped
MIN_BYTES = 1 << 20
KEEP = 4  # free slabs kept per size; more go back to the allocator


class OutputPool:
    """Free float32 slabs by size; :meth:`empty` hands out tensors over them."""

    def __init__(self, min_bytes: int = MIN_BYTES, keep: int = KEEP) -> None:
        self.min_bytes = min_bytes
        self.keep = keep
        self._free: dict[int, list[np.ndarray]] = defaultdict(list)
        # reentrant: a lease can be freed by the garbage collector while this thread is inside
        # empty() (an allocation there can run a collection), and its give_back takes the lock
        self._lock = threading.RLock()
        self.reused = 0  # tensors served from a returned slab (instrumentation for tests)

    def empty(self, shape: tuple[int, ...]) -> Tensor:
        """An uninitialised float32 tensor of ``shape``, over a reused slab when one is free."""
        n = math.prod(shape)
        if n * 4 < self.min_bytes:
            return torch.empty(shape)
        with self._lock:
            free = self._free[n]
            slab = free.pop() if free else None
            self.reused += slab is not None
        if slab is None:
            slab = np.empty(n, dtype=np.float32)
        return torch.from_numpy(np.asarray(_Lease(self, slab))).view(shape)

    def give_back(self, slab: np.ndarray) -> None:
        with self._lock:
            free = self._free[slab.size]
            if len(free) < self.keep:
                free.append(slab)

    def clear(self) -> None:
        """Drop every free slab (the memory goes back to the allocator)."""
        with self._lock:
            self._free.clear()


class _Lease:
    """One tensor's hold on a slab: the array numpy builds from it keeps it as its base, so it
    lives exactly as long as the tensor's storage, and returns the slab when it goes."""

    def __init__(self, pool: OutputPool, slab: np.ndarray) -> None:
        self._pool = pool
        self._slab = slab
        self.__array_interface__ = slab.__array_interface__

    def __del__(self) -> None:
        try:  # noqa: SIM105 - no contextlib at interpreter shutdown, when this can run
            self._pool.give_back(self._slab)
        except Exception:  # interpreter shutdown: nothing to return to
            pass


POOL = OutputPool()
