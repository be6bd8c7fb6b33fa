"""Find what compile() can fuse: BatchNorm after a conv or linear layer (folded into it), a ReLU
after that, and a 2x2 stride-2 MaxPool2d after a conv's (pooled in the kernel's store, on backends
that can).

The chains come from a ``torch.fx`` trace: a conv whose only user is a BatchNorm2d (a Linear's: a
BatchNorm1d, folded for 2-D inputs, where its features are the Linear's outputs), a ReLU
module whose only input is that conv (or its BatchNorm), a MaxPool2d whose only input is the
last of them. Each module is fused only if nothing else reads its input. Models fx cannot trace
fall back to consecutive ``Conv2d[, BatchNorm2d][, ReLU][, MaxPool2d]`` children of an
``nn.Sequential``.
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
    bn: str | None = None  # BatchNorm2d folded into the conv, BatchNorm1d into the linear layer
    relu: str | None = None  # ReLU applied in the kernel's epilogue
    pool: str | None = None  # 2x2 stride-2 MaxPool2d applied in the epilogue, after the ReLU


def fusable_pool(module: nn.Module | None) -> bool:
    """Whether ``module`` is the max pool a kernel's store can fuse: nn.MaxPool2d with a 2x2
    window, stride 2, no padding or dilation, no indices, floor or ceil mode (VGG's pools).
    Other pools stay separate modules."""
    if type(module) is not nn.MaxPool2d:
        return False

    def pair(v: object) -> tuple:
        return tuple(v) if isinstance(v, list | tuple) else (v, v)

    stride = module.kernel_size if module.stride in (None, ()) else module.stride
    return (
        pair(module.kernel_size) == (2, 2)
        and pair(stride) == (2, 2)
        and pair(module.padding) == (0, 0)
        and pair(module.dilation) == (1, 1)
        and not module.return_indices
    )


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
        conv = isinstance(modules[node.target], nn.Conv2d)
        bn = only_user(node, nn.BatchNorm2d if conv else nn.BatchNorm1d)
        if bn is not None:
            chain.bn, tail = bn.target, bn
        relu = only_user(tail, nn.ReLU)
        if relu is not None:
            chain.relu, tail = relu.target, relu
        if isinstance(modules[node.target], nn.Conv2d):
            pool = only_user(tail, nn.MaxPool2d)
            if pool is not None and fusable_pool(modules[pool.target]):
                chain.pool = pool.target
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
            if j < len(names) and isinstance(seq[j], nn.BatchNorm2d if conv else nn.BatchNorm1d):
                chain.bn = f"{prefix}.{names[j]}" if prefix else names[j]
                j += 1
            if j < len(names) and isinstance(seq[j], nn.ReLU):
                chain.relu = f"{prefix}.{names[j]}" if prefix else names[j]
                j += 1
            if j < len(names) and conv and fusable_pool(seq[j]):
                chain.pool = f"{prefix}.{names[j]}" if prefix else names[j]
            chains[full] = chain
    return chains


def find_chains(model: nn.Module) -> dict[str, Chain]:
    """Per GEMM layer name, the BatchNorm, ReLU and max pool that can be fused into it."""
    try:
        return _fx_chains(model)
    except Exception:  # fx cannot trace data-dependent control flow; use the simple rule
        return _sequential_chains(model)


def fold_bn(conv: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d
            ) -> tuple[Tensor, Tensor]:  # fmt: skip
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
    return w * scale.reshape(-1, *[1] * (w.dim() - 1)), b * scale + shift
