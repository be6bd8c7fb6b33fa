"""prune() chooses the same masks and reports the same block counts as it always has.

Speed work on the pruning path must not move a single mask bit. Each method prunes a small model
(a ragged conv, a grouped conv and a Linear) whose weights are multiples of 1/32 with many ties, so
every block sum is exact whatever the order of summation (the pins do not depend on the host's
SIMD width or thread count). The digest covers every layer's mask, the pruned originals and the
result's per-layer facts; the pinned digests were taken from the selection code as it stood
before it was vectorised further. That code's two selection functions are kept below, verbatim,
and compared with today's on adversarial scores (NaN, infinities, signed zeros, heavy ties).

The conv K order's switch to (kh, kw, c_in) re-took the pins of the methods whose blocks or ties
follow K (all but filter and channel-perf). Before that, the same selection code with the view
swapped back to (c_in, kh, kw) (benchmarks/k_order.py's channel_major_view) reproduced every
earlier pin: only the view moved, not the selection.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from prune_helpers import SMALL
from torch import nn

from gpuprune.prune import methods, prune
from gpuprune.prune.masks import get_mask

PINS = {
    "tile": "d60b0341b40fcab9",
    "simd": "c0e37f4ff03e1e90",
    "simd-balanced": "f767c3cefb447d32",
    "unstructured": "def53933f7a50e4d",
    "filter": "c46b7a3e408e6df9",
    "ssl": "a0a0cd2703319e0d",
    "balanced": "87250d0dc40a2145",
    "nm": "39b0df25714ee3a3",
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


# ---- the previous selection code, verbatim (band constants as parameters) ----------------------
def old_kth_smallest(x, j, band_min, band_sample):
    n = x.numel()
    if n <= band_min:
        return torch.kthvalue(x, j).values
    sample = torch.sort(x[:: max(1, n // band_sample)]).values
    s, q = sample.numel(), j / n
    for margin in (0.002, 0.02, 0.2):
        lo = sample[max(0, int((q - margin) * s))]
        hi = sample[min(s - 1, int((q + margin) * s) + 1)]
        below = int(torch.count_nonzero(x < lo))
        inside = (x >= lo) & (x <= hi)
        if below < j <= below + int(torch.count_nonzero(inside)):
            return torch.kthvalue(x[inside], j - below).values
    return torch.kthvalue(x, j).values


def old_prune_lowest(scores, j, band_min, band_sample):
    flat = scores.flatten()
    if j == 0:
        return torch.ones(scores.shape, dtype=torch.bool)
    v = old_kth_smallest(flat, j, band_min, band_sample)
    if bool(v.isnan()):
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[:j]] = False
        return keep.reshape(scores.shape)
    keep = ~(flat <= v)
    ties = (flat == v).nonzero().squeeze(1)
    prune_ties = j - (flat.numel() - int(torch.count_nonzero(keep)) - ties.numel())
    keep[ties[prune_ties:]] = True
    return keep.reshape(scores.shape)


def old_keep_top_per_row(scores, counts):
    size = scores.shape[-1]
    counts = counts.to(torch.long).clamp(0, size)
    top = int(counts.max()) if counts.numel() else 0
    if top == 0:
        return torch.zeros(scores.shape, dtype=torch.bool)
    values = torch.topk(scores, top, dim=-1, sorted=True).values
    index = (counts - 1).clamp(min=0).view(1, -1, 1).expand(scores.shape[0], -1, 1)
    thr = values.gather(-1, index)
    keep = scores > thr
    need = counts.view(1, -1) - keep.sum(-1)
    tied = scores == thr
    crowded = tied.sum(-1) > need
    keep |= tied & ~crowded.unsqueeze(-1)
    where = crowded.nonzero(as_tuple=True)
    if where[0].numel():
        t = tied[where]
        keep[where] |= t & (t.cumsum(-1) <= need[where].unsqueeze(-1))
    return keep


SPECIAL = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1.0, 2.0])


def adversarial(shape, gen, special: float):
    """Few distinct values (ties), and a share ``special`` of NaN, infinities and signed zeros."""
    x = torch.randint(0, 5, shape, generator=gen).float() / 4
    pick = torch.rand(shape, generator=gen) < special
    x[pick] = SPECIAL[torch.randint(0, len(SPECIAL), (int(pick.sum()),), generator=gen)]
    return x


@pytest.mark.parametrize("band", [False, True], ids=["kthvalue", "band"])
def test_prune_lowest_matches_previous_code(band, monkeypatch):
    band_min, band_sample = (0, 16) if band else (methods._BAND_MIN, methods._BAND_SAMPLE)
    monkeypatch.setattr(methods, "_BAND_MIN", band_min)
    monkeypatch.setattr(methods, "_BAND_SAMPLE", band_sample)
    gen = torch.Generator().manual_seed(11)
    for n in (1, 3, 50, 1000):
        for special in (0.0, 0.05, 0.5):
            x = adversarial((n,), gen, special)
            for j in sorted({0, 1, n // 3, n // 2, n - 1, n}):
                got = methods._prune_lowest(x, j)
                want = old_prune_lowest(x, j, band_min, band_sample)
                assert torch.equal(got, want), (n, special, j)


def test_keep_top_per_row_matches_previous_code():
    gen = torch.Generator().manual_seed(12)
    for _ in range(60):
        rows, groups, size = (int(v) for v in torch.randint(1, 7, (3,), generator=gen))
        special = float(torch.rand((), generator=gen)) * 0.4
        scores = adversarial((rows, groups, size), gen, special)
        counts = torch.randint(0, size + 1, (groups,), generator=gen)
        if bool(torch.rand((), generator=gen) < 0.3):
            counts = counts.clamp(max=1)  # the one-per-bank (amax) threshold
        got = methods.keep_top_per_row(scores, counts)
        assert torch.equal(got, old_keep_top_per_row(scores, counts)), (scores, counts)
