"""Compiled inference layers (SkipConv2d, SkipLinear, SkipMultiheadAttention) and compile() that
swaps them in."""

from gpuprune.nn.attention import SkipMultiheadAttention
from gpuprune.nn.compile import CompiledLayer, CompileReport, compile, resolve_backend
from gpuprune.nn.layers import SkipConv2d, SkipGroupedConv2d, SkipLinear

__all__ = [
    "CompileReport",
    "CompiledLayer",
    "SkipConv2d",
    "SkipGroupedConv2d",
    "SkipLinear",
    "SkipMultiheadAttention",
    "compile",
    "resolve_backend",
]
