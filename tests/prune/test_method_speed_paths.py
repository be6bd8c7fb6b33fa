"""The vectorised mask paths give exactly the masks of a plain sort-based reference.

The references below are the straightforward implementations (stable argsort over every score,
repeat_interleave expansion); the library selects with kthvalue/topk and comparison passes.
Scores are drawn from few distinct values so ties are frequent and their order is tested.
"""

from __future__ import annotations

import pytest
import torch

from gpuprune.gemm import block_reduce
from gpuprune.prune import methods
from gpuprune.prune.layers import LayerSpec
from gpuprune.prune.methods import get_method, keep_top_per_row


def ref_select_lowest(scores, sizes, sparsity):
    flat, sz = scores.flatten(), sizes.flatten().double()
    if sparsity == 0.0:
        return torch.ones(scores.shape, dtype=torch.bool)
    order = torch.argsort(flat, stable=True)
    cum = torch.cat([sz.new_zeros(1), sz[order].cumsum(0)])[: flat.numel()]
    j = int(torch.argmin((cum - sparsity * sz.sum()).abs()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:j]] = False
    return keep.reshape(scores.shape)


def ref_keep_top(scores, counts):
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1]).expand_as(order).contiguous())
    return rank < counts.view(1, -1, 1)


def ref_block_mask(importance, sparsity, shape, block):
    (m, k), (bm, bk) = shape, block
    if block == (1, 1):
        scores, sizes = importance.double(), torch.ones(shape, dtype=torch.float64)
    else:
        sizes = block_reduce(torch.ones(shape), block, "sum").double()
        scores = block_reduce(importance.double(), block, "sum") / sizes
    keep = ref_select_lowest(scores, sizes, sparsity)
    return keep.repeat_interleave(bm, 0).repeat_interleave(bk, 1)[:m, :k]


def ref_bank_mask(method, importance, sparsity, layer):
    m, k = layer.shape
    b = method.bank_size(layer)
    banks = -(-k // b)
    padded = torch.full((m, banks * b), float("-inf"), dtype=torch.float64)
    padded[:, :k] = importance.double()
    sizes = [b] * (banks - 1) + [k - b * (banks - 1)]
    keep = ref_keep_top(padded.view(m, banks, b), torch.tensor(method.counts(sizes, sparsity)))
    return keep.reshape(m, banks * b)[:, :k]


def tied_importance(shape, gen, levels=7):
    """Non-negative scores from few distinct values (many ties), some exact zeros."""
    return torch.randint(0, levels, shape, generator=gen).float() / levels


SHAPES = [(8, 8), (13, 37), (64, 96), (70, 130), (1, 50), (33, 1)]
SPARSITIES = [0.0, 0.1, 0.5, 0.75, 0.97]


@pytest.fixture(params=[False, True], ids=["kthvalue", "band"])
def band(request, monkeypatch):
    """Run each case twice: small inputs via kthvalue, and through the sampled-bracket path."""
    if request.param:
        monkeypatch.setattr(methods, "_BAND_MIN", 0)
        monkeypatch.setattr(methods, "_BAND_SAMPLE", 16)
    return request.param


@pytest.mark.parametrize("name", ["unstructured", "filter", "ssl", "tile", "simd"])
def test_block_methods_match_reference(name, band):
    gen = torch.Generator().manual_seed(1)
    method = get_method(name)
    for shape in SHAPES:
        for ties in (True, False):
            imp = tied_importance(shape, gen) if ties else torch.rand(shape, generator=gen)
            layer = LayerSpec("l", shape, kernel_area=1)
            if name in ("tile", "simd"):
                block = {"tile": (4, 8), "simd": (2, 4)}[name]
                method.unit = lambda layer, b=block: b  # a small block, ragged edges included
            block = tuple(method.unit(layer))
            for s in SPARSITIES:
                got = method.mask(imp, s, layer)
                want = ref_block_mask(imp, s, shape, block)
                assert torch.equal(got, want), (name, shape, ties, s)


@pytest.mark.parametrize("name,options", [("balanced", {"bank": 8}), ("balanced", {"bank": 5}),
                                          ("nm", {}), ("nm", {"n": 1, "m": 3})])  # fmt: skip
def test_bank_methods_match_reference(name, options):
    gen = torch.Generator().manual_seed(2)
    method = get_method(name, **options)
    for shape in SHAPES:
        for ties in (True, False):
            imp = tied_importance(shape, gen) if ties else torch.rand(shape, generator=gen)
            layer = LayerSpec("l", shape)
            for s in SPARSITIES:
                got = method.mask(imp, s, layer)
                assert torch.equal(got, ref_bank_mask(method, imp, s, layer)), (shape, ties, s)


def test_keep_top_per_row_matches_reference():
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        rows, groups, size = (int(v) for v in torch.randint(1, 9, (3,), generator=gen))
        scores = tied_importance((rows, groups, size), gen, levels=3).double()
        scores[:, -1, size // 2 :] = float("-inf")  # a ragged last group's padding
        counts = torch.randint(0, size + 1, (groups,), generator=gen)
        assert torch.equal(keep_top_per_row(scores, counts), ref_keep_top(scores, counts))


def test_select_lowest_matches_reference(band):
    gen = torch.Generator().manual_seed(4)
    for n in (1, 2, 7, 100, 1000):
        scores = tied_importance((n,), gen, levels=5).double()
        for sizes in (torch.ones(n) * 3, torch.randint(1, 9, (n,), generator=gen).double()):
            for s in SPARSITIES:
                got = methods.select_lowest(scores, sizes, s)
                assert torch.equal(got, ref_select_lowest(scores, sizes, s)), (n, s)


def test_select_lowest_orders_nan_last_like_argsort(band):
    scores = torch.rand(1000, generator=torch.Generator().manual_seed(5)).double()
    scores[[3, 500, 999]] = float("nan")
    for s in (0.1, 0.5, 0.999):
        got = methods.select_lowest(scores, torch.ones(1000), s)
        assert torch.equal(got, ref_select_lowest(scores, torch.ones(1000), s)), s
