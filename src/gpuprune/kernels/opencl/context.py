"""Finding an OpenCL device, once per process, with a one-line error naming the setup step.

The device is the first GPU of any platform, else the first device at all (PoCL's CPU device on
CPU-only machines). ``GPUPRUNE_OPENCL_DEVICE`` picks another: a substring of the device or
platform name (e.g. ``pocl``, ``NVIDIA``) or ``platform:device`` indices (``0:1``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from gpuprune.errors import DeviceNotFoundError, UserError

ENV_DEVICE = "GPUPRUNE_OPENCL_DEVICE"
SETUP_FIX = (
    "install an OpenCL driver, or PoCL for the CPU: make setup "
    "(pip install 'gpuprune[pocl]'), or use backend='cpu'"
)


@dataclass(frozen=True)
class ClDevice:
    """An OpenCL context with one device and its in-order queue."""

    context: Any  # pyopencl.Context
    device: Any  # pyopencl.Device
    queue: Any  # pyopencl.CommandQueue

    @property
    def name(self) -> str:
        return f"{self.device.name.strip()} ({self.device.platform.name.strip()})"


def import_pyopencl() -> Any:
    """The pyopencl module, or a UserError with the install step."""
    try:
        import pyopencl
    except ImportError:
        raise UserError("pyopencl is not installed", SETUP_FIX) from None
    return pyopencl


def _all_devices(cl: Any) -> list[tuple[int, int, Any]]:
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader raises when no platform is installed
        platforms = []
    found = []
    for pi, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        found.extend((pi, di, d) for di, d in enumerate(devices))
    return found


def _choose(devices: list[tuple[int, int, Any]], cl: Any, wanted: str | None) -> Any:
    if wanted:
        for pi, di, d in devices:
            if wanted == f"{pi}:{di}" or wanted.lower() in f"{d.name} {d.platform.name}".lower():
                return d
        names = "; ".join(f"{pi}:{di} {d.name.strip()}" for pi, di, d in devices)
        raise DeviceNotFoundError(
            f"{ENV_DEVICE}={wanted!r} matches no OpenCL device",
            f"use one of: {names}",
        )
    gpus = [d for _, _, d in devices if d.type & cl.device_type.GPU]
    return (gpus or [d for _, _, d in devices])[0]


@functools.lru_cache(maxsize=1)
def _device(wanted: str | None) -> ClDevice:
    cl = import_pyopencl()
    devices = _all_devices(cl)
    if not devices:
        raise DeviceNotFoundError("no OpenCL platform or device found", SETUP_FIX)
    device = _choose(devices, cl, wanted)
    context = cl.Context([device])
    return ClDevice(context, device, cl.CommandQueue(context))


def get_device() -> ClDevice:
    """The process-wide OpenCL device (chosen once; see the module docstring)."""
    return _device(os.environ.get(ENV_DEVICE) or None)


def build_error(err: Exception) -> str:
    """The line of an OpenCL build failure that says why: the build log's first ``error:`` line
    (pyopencl puts it after several generic lines), else the first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("error:")), None)
    return (reason or (lines[0] if lines else "build failed"))[:160]


@functools.lru_cache(maxsize=4)
def _check_builds(dev: ClDevice) -> None:
    cl = import_pyopencl()
    try:
        cl.Program(dev.context, "__kernel void probe(__global float *a) { a[0] = 1.0f; }").build()
    except cl.Error as err:
        raise DeviceNotFoundError(
            f"the OpenCL driver of {dev.name} cannot build even a trivial kernel "
            f"({build_error(err)})",
            "update the driver (a PoCL older than the CPU says 'unknown target CPU'), pick "
            f"another device with {ENV_DEVICE}, or use backend='cpu'",
        ) from None


def get_usable_device() -> ClDevice:
    """:func:`get_device`, checked once to build a trivial kernel: a driver whose compiler cannot
    target this machine (PoCL's LLVM on a CPU newer than it) is reported here, as missing,
    rather than at the first layer."""
    dev = get_device()
    _check_builds(dev)
    return dev


def device_is_gpu() -> bool:
    """True when the process-wide OpenCL device is a GPU (not, e.g., PoCL on the CPU)."""
    cl = import_pyopencl()
    return bool(get_device().device.type & cl.device_type.GPU)
