"""CPU backend: a C kernel compiled on first use that walks only the kept weight blocks."""

from gpuprune.kernels.cpu.backend import CpuBackend, CpuConv2d, CpuGemm, CpuLinear
from gpuprune.kernels.cpu.build import cache_dir, load_library

__all__ = ["CpuBackend", "CpuConv2d", "CpuGemm", "CpuLinear", "cache_dir", "load_library"]
