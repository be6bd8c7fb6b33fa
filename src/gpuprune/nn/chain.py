"""Runs of skip convolutions or of residual blocks inside an ``nn.Sequential`` called as one
(``Backend.conv_chain``, ``Backend.block_chain``).

A plain VGG-style ``features`` block is conv, (folded) batch norm, (fused) ReLU and (fused) pool
over and over: once compiled, every module but the convolutions is an ``nn.Identity``. On
backends that offer it, :func:`chain_convolutions` gives such a Sequential the class
:class:`ChainedSequential`, which runs each run of consecutive convolutions with one backend
call. A ResNet stage is fused residual blocks (:mod:`gpuprune.nn.residual`) one after another:
a run of them whose convolutions all chain is one call too. The children, their names and the
state dict stay as they were; a hooked module (a block's own children included), a replaced
child, a traced input (``torch.compile``, ``torch.export``) or an input the chain cannot take
runs the children one by one as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gpuprune.kernels.backends import Backend
from gpuprune.nn.layers import SkipConv2d, observed
from gpuprune.nn.residual import FusedResidual


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


def _one_conv(module: nn.Module | None, backend: Backend) -> SkipConv2d | None:
    """The chainable skip conv that ``module`` is, or that a Sequential of it and identities
    (a shortcut's conv with its folded batch norm) amounts to; None otherwise."""
    if module is not None and _chainable(module, backend):
        return module
    if type(module) is nn.Sequential:
        inner = [m for m in module if type(m) is not nn.Identity]
        if len(inner) == 1 and _chainable(inner[0], backend):
            return inner[0]
    return None


class _BlockRun:
    """A run of fused residual blocks called through ``chain``, as long as every block is still
    what was chained: its fused forward, the same children, no hook on any of them."""

    def __init__(self, blocks: list[nn.Module], chain: Callable[[Tensor], Tensor | None]) -> None:
        self.blocks, self.chain = blocks, chain
        self.fused = [b.__dict__["forward"] for b in blocks]
        self.inner = [m for b in blocks for m in b.modules() if m is not b]

    def __call__(self, x: Tensor) -> Tensor | None:
        for block, fused in zip(self.blocks, self.fused, strict=True):
            if block.__dict__.get("forward") is not fused or not fused.intact():
                return None
        if observed(self.inner):
            return None
        return self.chain(x)


def _block_parts(block: nn.Module, backend: Backend) -> tuple | None:
    """``(path, shortcut, relu)`` of a fused residual block whose convolutions all chain."""
    fused = block.__dict__.get("forward")
    if not isinstance(fused, FusedResidual):
        return None
    m = fused.match
    path = [_one_conv(getattr(block, n), backend) for n in m.convs]
    shortcut = None if m.shortcut is None else _one_conv(getattr(block, m.shortcut), backend)
    if any(c is None for c in path) or (m.shortcut is not None and shortcut is None):
        return None
    return [c._run for c in path], None if shortcut is None else shortcut._run, m.relu


def _block_runs(name: str, children: list[tuple[str, nn.Module]], backend: Backend,
                runs: dict[int, _Run], named: list[str]) -> None:  # fmt: skip
    """Runs of two or more consecutive chainable residual blocks among ``children``."""
    i = 0
    while i < len(children):
        j, parts = i, []
        while j < len(children) and (p := _block_parts(children[j][1], backend)) is not None:
            parts.append(p)
            j += 1
        chain = backend.block_chain(parts) if j - i > 1 else None
        if chain is not None:
            blocks = [m for _, m in children[i:j]]
            runs[i] = _Run(i, j, _BlockRun(blocks, chain), blocks)
            prefix = f"{name}." if name else ""
            named.append(f"{prefix}{children[i][0]}-{prefix}{children[j - 1][0]}")
        i = max(j, i + 1)


def chain_convolutions(model: nn.Module, backend: Backend,
                       block_runs: list[str] | None = None) -> list[str]:  # fmt: skip
    """Give every plain ``nn.Sequential`` of ``model`` with two or more consecutive skip
    convolutions (identities between them allowed), or two or more consecutive fused residual
    blocks, the class :class:`ChainedSequential`; returns each run of convolutions as
    "first-last" module names (and appends each run of blocks to ``block_runs``)."""
    named, blocks = [], block_runs if block_runs is not None else []
    for name, seq in list(model.named_modules()):
        if type(seq) is not nn.Sequential:
            continue
        children = list(seq._modules.items())
        runs: dict[int, _Run] = {}
        _block_runs(name, children, backend, runs, blocks)
        i = 0
        while i < len(children):
            if i in runs:
                i = runs[i].end
                continue
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
