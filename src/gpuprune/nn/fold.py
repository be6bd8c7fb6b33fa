"""Find what compile() can fuse: BatchNorm after a conv (folded into it) and a ReLU after that.

The chains come from a ``torch.fx`` trace: a conv whose only user is a BatchNorm2d, and a ReLU
module whose only input is that conv (or its BatchNorm). Models fx cannot trace fall back to
consecutive ``Conv2d, BatchNorm2d[, ReLU]`` children of an ``nn.Sequential``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Chain:
    """A GEMM layer and what follows it that can be fused into its kernel."""

    layer: str
    bn: str | None = None  # BatchNorm2d folded into the conv
    relu: str | None = None  # ReLU applied in the kernel's epilogue


def _fx_chains(model: nn.Module) -> dict[str, Chain]:
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    chains: dict[str, Chain] = {}
    # A module called from several places (one nn.ReLU reused in a residual block) must not be
    # fused away or folded: its other calls would change.
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")

    def only_user(node: torch.fx.Node, kind: type) -> torch.fx.Node | None:
        users = list(node.users)
        if (
            len(users) == 1
            and users[0].op == "call_module"
            and isinstance(modules.get(users[0].target), kind)
            and calls[users[0].target] == 1
        ):
            return users[0]
        return None

    for node in graph.nodes:
        gemm = nn.Conv2d | nn.Linear
        if node.op != "call_module" or not isinstance(modules.get(node.target), gemm):
            continue
        chain = Chain(node.target)
        chains[node.target] = chain
        if calls[node.target] != 1:
            continue
        tail = node
        if isinstance(modules[node.target], nn.Conv2d):
            bn = only_user(node, nn.BatchNorm2d)
            if bn is not None:
                chain.bn, tail = bn.target, bn
        relu = only_user(tail, nn.ReLU)
        if relu is not None:
            chain.relu = relu.target
    return chains


def _sequential_chains(model: nn.Module) -> dict[str, Chain]:
    chains: dict[str, Chain] = {}
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for i, name in enumerate(names):
            if not isinstance(seq[i], nn.Conv2d | nn.Linear):
                continue
            full = f"{prefix}.{name}" if prefix else name
            chain = Chain(full)
            j = i + 1
            conv = isinstance(seq[i], nn.Conv2d)
            if j < len(names) and conv and isinstance(seq[j], nn.BatchNorm2d):
                chain.bn = f"{prefix}.{names[j]}" if prefix else names[j]
                j += 1
            if j < len(names) and isinstance(seq[j], nn.ReLU):
                chain.relu = f"{prefix}.{names[j]}" if prefix else names[j]
            chains[full] = chain
    return chains


def find_chains(model: nn.Module) -> dict[str, Chain]:
    """Per GEMM layer name, the BatchNorm and ReLU that can be fused into it."""
    try:
        return _fx_chains(model)
    except Exception:  # fx cannot trace data-dependent control flow; use the simple rule
        return _sequential_chains(model)


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(weight, bias) of ``bn(conv(x))`` in eval mode. Row scaling keeps zero blocks zero."""
    if bn.running_mean is None or bn.running_var is None:
        mean = torch.zeros(bn.num_features)
        var = torch.ones(bn.num_features)
    else:
        mean, var = bn.running_mean.detach(), bn.running_var.detach()
    scale = torch.rsqrt(var.float() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().float()
    shift = -mean.float() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().float()
    w = conv.weight.detach().float()
    b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[0])
    return w * scale.reshape(-1, 1, 1, 1), b * scale + shift
