"""Triton backend: block-sparse gathered-K matmul for CUDA/ROCm GPUs."""

from gpuprune.kernels.triton.backend import TritonBackend, TritonConv2d, TritonGemm, TritonLinear

__all__ = ["TritonBackend", "TritonConv2d", "TritonGemm", "TritonLinear"]
