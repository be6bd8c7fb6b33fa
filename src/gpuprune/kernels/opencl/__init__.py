"""OpenCL backend: one skip-GEMM source, three variants, tile parameters from the Target."""

from gpuprune.kernels.opencl.backend import ClLayer, OpenCLBackend, kernel_arrays
from gpuprune.kernels.opencl.context import get_device
from gpuprune.kernels.opencl.programs import build_program, kernel_source

__all__ = [
    "ClLayer",
    "OpenCLBackend",
    "build_program",
    "get_device",
    "kernel_arrays",
    "kernel_source",
]
