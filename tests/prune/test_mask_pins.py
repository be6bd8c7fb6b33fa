"""prune() chooses the same masks and reports the same block counts as it always has.

Speed work on the pruning path must not move a single mask bit. Each method prunes a small model
(a ragged conv, a grouped conv and a Linear) whose weights are multiples of 1/32 with many ties, so
every block sum is exact whatever the order of summation (the pins do not depend on the host's
SIMD width or thread count). The digest covers every layer's mask, the pruned originals and the
result's per-layer facts; the pinned digests were taken from the selection code as it stood
before it was vectorised further.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from prune_helpers import SMALL
from torch import nn

from gpuprune.prune import prune
from gpuprune.prune.masks import get_mask

PINS = {
    "tile": "6843b494c29f59f0",
    "simd": "4d0e1474866d20a6",
    "simd-balanced": "145ed609f66bd8cf",
    "unstructured": "ff1f92c4f2891364",
    "filter": "c46b7a3e408e6df9",
    "ssl": "3f1ba0667ac8f090",
    "balanced": "a4f35e8b1be68a4e",
    "nm": "808043dd199c1119",
    "channel-perf": "8bf1b84ecc1ade15",
}


def model() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(6, 40, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(40, 36, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(36, 72, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(72, 130),
    )
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net.parameters():  # exact binary fractions, few distinct values: ties and zeros
            p.copy_((torch.randint(-12, 13, p.shape, generator=gen) / 32).float())
    return net


def staircase(layer, channels: int) -> float:
    return float(-(-channels // 8))  # a latency step every 8 output channels


def digest(net: nn.Module, result) -> str:
    h = hashlib.sha256()
    for name, mod in net.named_modules():
        mask = get_mask(mod)
        if mask is not None:
            h.update(name.encode())
            h.update(mask.contiguous().numpy().tobytes())
            h.update(mod.parametrizations.weight.original.detach().numpy().tobytes())
    for lr in result.layers:
        h.update(repr((lr.name, lr.shape, lr.block, lr.sparsity, lr.blocks_total,
                       lr.blocks_kept, lr.flops_kept)).encode())  # fmt: skip
    return h.hexdigest()[:16]


@pytest.mark.parametrize("method", list(PINS))
def test_masks_are_pinned(method):
    net = model()
    options = {"method_options": {"latency": staircase}} if method == "channel-perf" else {}
    result = prune(net, method, 0.6, target=SMALL, exclude_first_last=False,
                   input_size=(6, 8, 8), **options)  # fmt: skip
    assert digest(net, result) == PINS[method]
