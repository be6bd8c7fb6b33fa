"""Residual blocks run with the shortcut's add and the ReLU after it in the last conv's store.

A ResNet block (ours, torchvision's BasicBlock and Bottleneck, and any module whose forward has
the same shape) computes ``relu(conv_n(...relu(conv_1(x))...) + shortcut(x))`` with the batch
norms folded. Run as written, each block makes two more passes over its output (the add, the
ReLU) and one over each inner conv's output (their ReLU: one ``nn.ReLU`` module is called at
several places, so compile cannot replace it by an identity). On backends with
``fuses_residual`` a matched block instead runs the inner convolutions with the ReLU in their
store and gives the shortcut to the last one, whose store adds it and applies the ReLU.

A block matches when a ``torch.fx`` trace of its forward, with every direct child a leaf and
identities dropped, is exactly: a path of skip convolutions from the input, optional ReLUs
between them; a shortcut that is the input itself or one child module called on it; an add of
the two; an optional ReLU; the output. Anything else (another op, a value used twice, control
flow fx cannot trace) leaves the block as it is. The match only sets an instance ``forward``:
the block's class, children, names and state dict stay, and a hooked child, a global hook or a
traced input runs the original forward.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from gpuprune.kernels.backends import Backend
from gpuprune.nn.layers import SkipConv2d, observed

_ADDS = {operator.add, operator.iadd, torch.add}
_RELUS = {torch.relu, torch.relu_, F.relu}


@dataclass(frozen=True)
class Match:
    """The children of a matched block: the conv path (and which are followed by a ReLU), the
    shortcut child (None: the input itself), and whether a ReLU follows the add."""

    convs: tuple[str, ...]
    relu_after: tuple[bool, ...]
    shortcut: str | None
    relu: bool


class _Leaves(fx.Tracer):
    """Every direct child of the traced block is one call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _is_relu(node: object, children: dict[str, nn.Module]) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_module":
        return type(children.get(node.target)) is nn.ReLU
    return (node.op == "call_function" and node.target in _RELUS and len(node.args) == 1
            and set(node.kwargs) <= {"inplace"})  # fmt: skip


def match_block(block: nn.Module, backend: Backend) -> Match | None:
    """The block's :class:`Match` when its forward has the residual shape (module docstring)."""
    children = dict(block.named_children())
    if not backend.fuses_residual or not any(_fusable_conv(c) for c in children.values()):
        return None
    try:
        graph = _Leaves().trace(block)
    except Exception:  # data-dependent control flow, unsupported ops: not a plain block
        return None
    identity: dict[fx.Node, object] = {
        n: n.args[0] for n in graph.nodes
        if n.op == "call_module" and type(children.get(n.target)) is nn.Identity
    }  # fmt: skip

    def real(n: object) -> object:  # read through the identities (folded batch norms)
        while n in identity:
            n = identity[n]
        return n

    nodes = [n for n in graph.nodes if n not in identity]
    if [n.op for n in nodes].count("placeholder") != 1 or nodes[-1].op != "output":
        return None
    x = nodes[0]
    users: dict[object, int] = {}
    for n in nodes:
        for arg in n.all_input_nodes:
            users[real(arg)] = users.get(real(arg), 0) + 1
    seen = {real(nodes[-1].args[0])}
    out = real(nodes[-1].args[0])
    relu = _is_relu(out, children)
    if relu:
        out = real(out.args[0])
        seen.add(out)
    if not (isinstance(out, fx.Node) and out.op == "call_function" and out.target in _ADDS
            and len(out.args) == 2 and not out.kwargs and users.get(out) == 1):  # fmt: skip
        return None
    a, b = (real(v) for v in out.args)
    body = {n for n in nodes if n.op not in ("placeholder", "output")}
    for main, side in ((a, b), (b, a)):
        path = _conv_path(main, x, children, users, real)
        if path is None or not _shortcut_ok(side, x, children, users, real):
            continue
        convs, relu_after, path_nodes = path
        if body != seen | path_nodes | ({side} if side is not x else set()):
            return None  # anything else in the forward: not a plain residual block
        return Match(convs, relu_after, None if side is x else side.target, relu)
    return None


def _conv_path(end: object, x: fx.Node, children: dict[str, nn.Module],
               users: dict[object, int], real: Callable[[object], object]
               ) -> tuple[tuple[str, ...], tuple[bool, ...], set[fx.Node]] | None:  # fmt: skip
    """The skip convolutions from ``x`` to ``end`` (a ReLU allowed after each but the last),
    whether a ReLU follows each, and the path's nodes; None if the path is anything else."""
    convs: list[str] = []
    relu_after: list[bool] = []
    visited: set[fx.Node] = set()
    node, relu_next = end, False
    while node is not x:
        if not isinstance(node, fx.Node) or users.get(node) != 1:
            return None
        visited.add(node)
        if _is_relu(node, children) and not relu_next and convs:
            relu_next = True
        elif node.op == "call_module" and _fusable_conv(children.get(node.target)):
            convs.append(node.target)
            relu_after.append(relu_next)
            relu_next = False
        else:
            return None
        if len(node.args) != 1 or node.kwargs and not _is_relu(node, children):
            return None
        node = real(node.args[0])
    if not convs or relu_next:
        return None
    return tuple(reversed(convs)), tuple(reversed(relu_after)), visited


def _fusable_conv(module: nn.Module | None) -> bool:
    return isinstance(module, SkipConv2d) and module.fuses_residual


def _shortcut_ok(side: object, x: fx.Node, children: dict[str, nn.Module],
                 users: dict[object, int], real: Callable[[object], object]) -> bool:  # fmt: skip
    if side is x:
        return True
    return (isinstance(side, fx.Node) and side.op == "call_module" and side.target in children
            and len(side.args) == 1 and real(side.args[0]) is x and not side.kwargs
            and users.get(side) == 1)  # fmt: skip


class FusedResidual:
    """A matched block's forward (an instance attribute of the block; module docstring)."""

    def __init__(self, block: nn.Module, match: Match) -> None:
        self.block, self.match = block, match
        # the children as matched: one replaced since (by a user) sends calls to the block's own
        # forward rather than to a child that may not take a residual
        names = [*match.convs, *([match.shortcut] if match.shortcut else [])]
        self.children = {n: getattr(block, n) for n in names}

    def intact(self) -> bool:
        """Whether the block still has the children it was matched with."""
        return all(getattr(self.block, n) is c for n, c in self.children.items())

    def __call__(self, x: Tensor) -> Tensor:
        block, m = self.block, self.match
        if (type(x) is not Tensor or torch.compiler.is_compiling() or observed(block.children())
                or not self.intact()):  # fmt: skip
            return type(block).forward(block, x)
        y = x
        for name in m.convs[:-1]:
            y = getattr(block, name)(y)  # its ReLU fused at compile time
        shortcut = x if m.shortcut is None else getattr(block, m.shortcut)(x)
        return getattr(block, m.convs[-1]).with_residual(y, shortcut, m.relu)


def fuse_residual_blocks(model: nn.Module, backend: Backend,
                         relu_fused: Callable[[str, str], None]) -> list[str]:  # fmt: skip
    """Match every residual block of ``model`` and give it a :class:`FusedResidual` forward;
    ``relu_fused(block_name, conv_name)`` replaces a conv by one whose kernel applies the ReLU
    that follows it. Returns the matched blocks' names."""
    if not backend.fuses_residual:
        return []
    fused = []
    for name, block in list(model.named_modules()):
        match = match_block(block, backend)
        if match is None:
            continue
        for conv, then_relu in zip(match.convs, match.relu_after, strict=True):
            if then_relu and not getattr(block, conv).relu:
                relu_fused(name, conv)
        block.forward = FusedResidual(block, match)
        fused.append(name or type(block).__name__)
    return fused
