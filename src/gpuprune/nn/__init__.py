"""Compiled inference layers (SkipConv2d, SkipLinear) and compile() that swaps them in."""

from gpuprune.nn.compile import CompiledLayer, CompileReport, compile, resolve_backend
from gpuprune.nn.layers import SkipConv2d, SkipGroupedConv2d, SkipLinear

__all__ = [
    "CompileReport",
    "CompiledLayer",
    "SkipConv2d",
    "SkipGroupedConv2d",
    "SkipLinear",
    "compile",
    "resolve_backend",
]
