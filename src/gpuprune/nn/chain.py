"""Runs of skip convolutions inside an ``nn.Sequential`` called as one (``Backend.conv_chain``).

A plain VGG-style ``features`` block is conv, (folded) batch norm, (fused) ReLU and (fused) pool
over and over: once compiled, every module but the convolutions is an ``nn.Identity``. On
backends that offer it, :func:`chain_convolutions` gives such a Sequential the class
:class:`ChainedSequential`, which runs each run of consecutive convolutions with one backend
call. The children, their names and the state dict stay as they were; a hooked module, a traced
input (``torch.compile``, ``torch.export``) or an input the chain cannot take runs the children
one by one as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gpuprune.kernels.backends import Backend
from gpuprune.nn.layers import SkipConv2d, observed


class _Run:
    """Children ``start`` to ``end - 1`` of a Sequential, run by ``chain``."""

    def __init__(self, start: int, end: int, chain: Callable[[Tensor], Tensor | None],
                 modules: list[nn.Module]) -> None:  # fmt: skip
        self.start, self.end, self.chain, self.modules = start, end, chain, modules



class ChainedSequential(nn.Sequential):
    """An ``nn.Sequential`` whose runs of skip convolutions are each one backend call."""

    _gp_runs: dict[int, _Run]

    def forward(self, x: Any) -> Any:
        runs = self.__dict__.get("_gp_runs")
        if not runs or type(x) is not Tensor or torch.compiler.is_compiling():
            return super().forward(x)
        children = list(self._modules.values())
        i = 0
        while i < len(children):
            run = runs.get(i)
            # a run is taken only over the very modules it was built from: after an insert,
            # a delete or a replaced child the Sequential runs as written
            if (run is not None and not observed(run.modules)
                    and children[i:run.end] == run.modules):  # fmt: skip
                y = run.chain(x)
                if y is not None:
                    x, i = y, run.end
                    continue
            x = children[i](x)
            i += 1
        return x


def _chainable(module: nn.Module, backend: Backend) -> bool:
    return (type(module) is SkipConv2d and module.backend_name == backend.name
            and not module.conv1d and not any(module.geometry.pre_pad))  # fmt: skip


def chain_convolutions(model: nn.Module, backend: Backend) -> list[str]:
    """Give every plain ``nn.Sequential`` of ``model`` with two or more consecutive skip
    convolutions (identities between them allowed) the class :class:`ChainedSequential`;
    returns each run as "first-last" module names."""
    named = []
    for name, seq in list(model.named_modules()):
        if type(seq) is not nn.Sequential:
            continue
        children = list(seq._modules.items())
        runs: dict[int, _Run] = {}
        i = 0
        while i < len(children):
            if not _chainable(children[i][1], backend):
                i += 1
                continue
            j, convs = i, []
            while j < len(children) and (_chainable(children[j][1], backend)
                                         or type(children[j][1]) is nn.Identity):  # fmt: skip
                if type(children[j][1]) is not nn.Identity:
                    convs.append(children[j][1])
                j += 1
            chain = backend.conv_chain([c._run for c in convs]) if len(convs) > 1 else None
            if chain is not None:
                runs[i] = _Run(i, j, chain, [m for _, m in children[i:j]])
                prefix = f"{name}." if name else ""
                last = max(k for k in range(i, j) if type(children[k][1]) is not nn.Identity)
                named.append(f"{prefix}{children[i][0]}-{prefix}{children[last][0]}")
            i = j
        if runs:
            seq.__class__ = ChainedSequential
            seq._gp_runs = runs
    return named
